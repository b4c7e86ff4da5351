"""The adapter interface and the generic adapter: how zloth drives one kind of agent
around the process layer. One instance per run (parsers may keep state across lines)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

from schemas.logs import LogStreamName
from services.executor_runner.executors import AgentResult, ExecutorSpec, parse_line
from services.executor_runner.process import ProcessOutcome

__all__ = ["Adapter", "Parsed", "RunPaths", "as_int_usage", "fail", "wrap_prompt"]

Parsed = tuple[LogStreamName, str, AgentResult | None]
_MAX_REASON = 500
# how runtimes say they hit a memory limit (V8, libc, Python, Rust, Bun)
_OUT_OF_MEMORY = re.compile(
    r"out of memory|Cannot allocate memory|MemoryError|memory allocation of \d+ bytes failed",
    re.IGNORECASE,
)

PROMPT_RULES = """\
You are a coding agent run by zloth, an orchestrator, in a git working tree.

Task:
{instruction}

Rules for this run:
- Only edit files inside the current directory. Do not run git commit, push, checkout or
  reset, and do not touch .git, .env files or credentials: zloth stages, reviews, commits
  and pushes your changes itself.
- When you are done, write a short Markdown summary of what you changed (a few lines) to
  the file {summary_file} — zloth reads it and removes it; it is never committed."""


def wrap_prompt(instruction: str, summary_file: Path) -> str:
    """The instruction inside zloth's rules. It starts with fixed text, so an instruction
    that begins with "-" can never be read as a command-line option."""
    return PROMPT_RULES.format(instruction=instruction.strip(), summary_file=summary_file)


class RunPaths(msgspec.Struct, frozen=True, kw_only=True):
    workspace: Path
    home: Path
    summary_file: Path


def fail(outcome: ProcessOutcome, reason: str) -> ProcessOutcome:
    """`outcome` turned into a failure with `reason` (kept short and on one line)."""
    text = " ".join(reason.split())[:_MAX_REASON]
    return msgspec.structs.replace(outcome, outcome="failed", reason=text)


def as_int_usage(raw: Any, keys: tuple[str, ...] | None = None) -> dict[str, int]:
    """The integer counters of a usage object (nested objects and flags dropped)."""
    if not isinstance(raw, dict):
        return {}
    return {
        key: value for key, value in raw.items()
        if isinstance(value, int) and not isinstance(value, bool)
        and (keys is None or key in keys)
    }


def json_event(text: str) -> dict[str, Any] | None:
    """A stream-json line as a JSON object, or None when it is anything else (then it is
    shown as plain stdout)."""
    try:
        event = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None
    return event if isinstance(event, dict) else None


class Adapter:
    """Generic: the spec's template is the command, JSON-lines events are parsed by
    `parse_line`, and the exit code decides. CLI adapters override the hooks."""

    # HOME-relative paths holding the agent's session state, kept for a later resume
    state_paths: tuple[str, ...] = ()

    def __init__(self, spec: ExecutorSpec) -> None:
        self.spec = spec
        # the latest error the agent mentioned without giving up (an API retry, a
        # reconnect): not a failure by itself, but the best explanation of a timeout
        self.last_error: str | None = None
        self.out_of_memory: str | None = None

    def prompt(self, instruction: str, paths: RunPaths) -> str:
        return wrap_prompt(instruction, paths.summary_file) if self.spec.wrap_prompt \
            else instruction

    def prepare(self, paths: RunPaths, env: dict[str, str], session: str | None) -> None:
        """Write the agent's settings into its fresh HOME (called after a session's state
        was restored there, so it may also adjust that state)."""

    def parse(self, text: str) -> Parsed:
        return parse_line(self.spec, text)

    def observe_stderr(self, text: str) -> None:
        """A stderr line (logged as is): some CLIs only report retries there; any
        runtime reports running out of memory there."""
        if _OUT_OF_MEMORY.search(text):
            self.out_of_memory = text.strip()

    def check(
        self, outcome: ProcessOutcome, result: AgentResult | None, paths: RunPaths
    ) -> ProcessOutcome:
        """The final outcome: an error the agent reported fails the run even after exit 0,
        and it is the more readable reason when the process failed or timed out."""
        fatal = result.error if result else None
        if outcome.outcome == "canceled":
            return outcome
        if self.out_of_memory and outcome.outcome == "failed":
            return fail(outcome, f"agent ran out of memory ({outcome.reason}): "
                                 f"{self.out_of_memory}")
        if fatal is not None and outcome.outcome in ("succeeded", "failed"):
            # the agent's own words beat an exit code and its last stderr line
            code = f" (exit code {outcome.exit_code})" if outcome.exit_code else ""
            return fail(outcome, f"{self.spec.name}: {fatal}{code}")
        error = fatal or self.last_error
        if outcome.outcome == "succeeded" or error is None:
            return outcome
        reason = f"{outcome.reason} (agent error: {error})"
        return msgspec.structs.replace(outcome, reason=" ".join(reason.split())[:_MAX_REASON])
