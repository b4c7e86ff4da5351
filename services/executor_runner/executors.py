"""Executor definitions: the agent's command line (a template), its output format, and
how its JSON-lines output becomes log lines and a result. Built-in demo executors, or a
JSON file of specs whose unknown fields are errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from schemas.logs import LogStreamName

__all__ = [
    "AgentResult",
    "ExecutorConfigError",
    "ExecutorSpec",
    "build_argv",
    "builtin_executors",
    "load_executors",
    "merge_result",
    "parse_line",
]

TOKENS = ("instruction", "workspace", "summary_file", "session")
_TOKEN = re.compile(r"\{(instruction|workspace|summary_file|session)\}")
_ANY_TOKEN = re.compile(r"\{([a-z_]+)\}")  # `{word}`: a typo of a token, not TOML/JSON
_RESUME_SLOT = "{resume}"
_MAX_DISPLAY = 2000
_DEMO_AGENT = Path(__file__).with_name("demo_agent.py")


class ExecutorConfigError(ValueError):
    """The executors file cannot be read or is invalid; the message names the problem."""


class ExecutorSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One executor. `command` tokens may hold {instruction}, {workspace},
    {summary_file}, {session}; a token containing {session} is dropped when there is no
    session. `resume_args` are added only when resuming: at a bare "{resume}" token of
    `command`, or else at the end."""

    # the name is a NATS subject token (zloth.cmd.exec.<name>): no dots or wildcards
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)]
    command: Annotated[list[str], msgspec.Meta(min_length=1)]
    resume_args: list[str] = []
    output: Literal["plain", "jsonl"] = "plain"
    concurrency: Annotated[int, msgspec.Meta(ge=1)] = 2
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1800
    idle_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 600
    env_allow: list[str] = []
    env: dict[str, str] = {}
    # how zloth drives it: "generic" (the template above, exit code decides) or a CLI
    # adapter that also writes its settings, parses its events and judges its result
    # (or "patch": no process, `command` is not run; the LLM client asks `provider`)
    adapter: Literal["generic", "claude", "codex", "gemini", "patch"] = "generic"
    wrap_prompt: bool = False  # prefix the instruction with zloth's rules (edit files only…)
    version: str | None = None  # the version zloth pins and tests (scripts/install-agents)
    provider: Literal["openai", "anthropic", "google"] | None = None  # the patch agent's
    model: str | None = None  # the patch agent's model

    def __post_init__(self) -> None:
        secret = [n for n in (*self.env_allow, *self.env) if n.upper().startswith("ZLOTH_")]
        if secret:
            raise ValueError(f"executor {self.name!r}: ZLOTH_* never reaches an agent: {secret}")
        for token in (*self.command, *self.resume_args):
            unknown = [t for t in _ANY_TOKEN.findall(token) if t not in (*TOKENS, "resume")]
            if unknown:
                raise ValueError(f"executor {self.name!r}: unknown template token {{{unknown[0]}}}")


class AgentResult(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent reported about its work; any field may be missing. `error` is a
    failure the agent itself reported (an API error, a failed turn): the run failed even
    if the process exited 0."""

    summary: str | None = None
    session_id: str | None = None
    usage: dict[str, int] = {}
    cost_usd: float | None = None
    error: str | None = None


def build_argv(
    spec: ExecutorSpec, instruction: str, workspace: Path, summary_file: Path, session: str | None
) -> list[str]:
    """The agent's argv. Substitution is one pass per token, so an instruction that
    contains "{workspace}" stays literal; each value is one argv item (no shell)."""
    values = {
        "instruction": instruction,
        "workspace": str(workspace),
        "summary_file": str(summary_file),
        "session": session or "",
    }

    def fill(token: str) -> str:
        return _TOKEN.sub(lambda m: values[m.group(1)], token)

    resume = [fill(t) for t in spec.resume_args] if session else []
    argv: list[str] = []
    for token in spec.command:
        if token == _RESUME_SLOT:
            argv += resume
        elif session or "{session}" not in token:
            argv.append(fill(token))
    if _RESUME_SLOT not in spec.command:
        argv += resume
    return argv


def load_executors(
    path: Path | None, agents_bin: Path | None = None
) -> dict[str, ExecutorSpec]:
    """The executors of a JSON file (a list of specs; it replaces the built-ins), or the
    built-ins when `path` is None. Raises ExecutorConfigError naming the bad field."""
    if path is None:
        return builtin_executors(agents_bin)
    try:
        specs = msgspec.json.decode(path.read_bytes(), type=list[ExecutorSpec])
    except OSError as exc:
        raise ExecutorConfigError(f"cannot read executors file {path}: {exc}") from exc
    except msgspec.DecodeError as exc:  # ValidationError included: says field and position
        raise ExecutorConfigError(f"invalid executors file {path}: {exc}") from exc
    executors: dict[str, ExecutorSpec] = {}
    for spec in specs:
        if spec.name in executors:
            raise ExecutorConfigError(f"invalid executors file {path}: duplicate {spec.name!r}")
        executors[spec.name] = spec
    return executors


def builtin_executors(agents_bin: Path | None = None) -> dict[str, ExecutorSpec]:
    """demo-a/b/c run the demo agent (by file path: it needs no install, and a workspace
    cannot shadow it); noop prints one result line, for benchmarks; claude, codex and
    gemini run the pinned CLIs from `agents_bin` (else from PATH)."""
    demos = [
        ExecutorSpec(
            name=f"demo-{style}",
            command=[
                sys.executable,
                str(_DEMO_AGENT),
                "--style",
                style,
                "--summary-file",
                "{summary_file}",
                _RESUME_SLOT,
                "--",
                "{instruction}",
            ],
            resume_args=["--resume", "{session}"],
            output="jsonl",
            concurrency=4,
            timeout_seconds=600,
            idle_timeout_seconds=120,
        )
        for style in ("a", "b", "c")
    ]
    noop = ExecutorSpec(
        name="noop",
        command=["printf", "%s\\n", '{"type":"result","summary":"noop"}'],
        output="jsonl",
        concurrency=16,
        timeout_seconds=60,
        idle_timeout_seconds=60,
    )
    patch = ExecutorSpec(
        name="patch", adapter="patch", command=["patch-agent"], provider="anthropic",
        model="claude-sonnet-4-5", concurrency=4, timeout_seconds=900,
        idle_timeout_seconds=900,
    )
    from services.executor_runner.clis import cli_executors  # here: clis imports this module

    return {spec.name: spec for spec in [*demos, noop, *cli_executors(agents_bin), patch]}


def parse_line(spec: ExecutorSpec, text: str) -> tuple[LogStreamName, str, AgentResult | None]:
    """One stdout line → (stream kind, display text, result fields it carries). For a
    jsonl executor a JSON object becomes an "event"; anything else stays "stdout"."""
    if spec.output != "jsonl" or not text.lstrip().startswith("{"):
        return "stdout", text, None
    try:
        event = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return "stdout", text, None
    if not isinstance(event, dict):
        return "stdout", text, None
    return "event", _display(event)[:_MAX_DISPLAY], _extract(event)


def merge_result(current: AgentResult | None, new: AgentResult) -> AgentResult:
    """Fold result fields seen over a run (a session id early, the rest at the end)."""
    if current is None:
        return new
    return AgentResult(
        summary=new.summary if new.summary is not None else current.summary,
        session_id=new.session_id or current.session_id,
        usage=new.usage or current.usage,
        cost_usd=new.cost_usd if new.cost_usd is not None else current.cost_usd,
        error=new.error or current.error,
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _display(event: dict[str, Any]) -> str:
    """A readable line: the demo's own events, and the common shapes of the CLIs' events
    (Claude `message.content` blocks, Codex `item.text`, Gemini `content`)."""
    kind = _str(event.get("type")) or "event"
    if kind == "result":
        return f"[result] {_str(event.get('summary')) or _str(event.get('result')) or ''}".strip()
    tool = _str(event.get("tool")) or _str(event.get("tool_name"))
    if tool:
        return f"[tool] {tool} {_str(event.get('path')) or ''}".strip()
    message = event.get("message")
    blocks = message.get("content") if isinstance(message, dict) else None
    item = event.get("item")
    texts = [
        _str(event.get("text")),
        _str(event.get("content")),
        _str(item.get("text")) if isinstance(item, dict) else None,
        *(
            _str(b.get("text"))
            or (f"[tool] {b.get('name')}" if b.get("type") == "tool_use" else None)
            for b in (blocks if isinstance(blocks, list) else [])
            if isinstance(b, dict)
        ),
    ]
    shown = " ".join(t for t in texts if t)
    return shown or f"[{kind}] {msgspec.json.encode(event).decode()}"


def _extract(event: dict[str, Any]) -> AgentResult | None:
    session = _str(event.get("session_id")) or _str(event.get("thread_id"))
    if event.get("type") != "result":
        return AgentResult(session_id=session) if session else None
    raw_usage = event.get("usage")
    usage = {
        key: value
        for key, value in (raw_usage.items() if isinstance(raw_usage, dict) else [])
        if isinstance(value, int) and not isinstance(value, bool)
    }
    cost = event.get("cost_usd", event.get("total_cost_usd"))
    return AgentResult(
        summary=_str(event.get("summary")) or _str(event.get("result")),
        session_id=session,
        usage=usage,
        cost_usd=float(cost)
        if isinstance(cost, int | float) and not isinstance(cost, bool)
        else None,
    )
