"""Codex CLI (`codex exec --json`): events thread.started (thread_id = the session),
turn.started, item.started / item.completed (agent_message, reasoning, command_execution,
file_change, error), turn.completed (usage), turn.failed, error (a retry notice).

Its provider is a custom one written into an isolated ~/.codex/config.toml (base URL from
OPENAI_BASE_URL, key from OPENAI_API_KEY, Responses wire API, bounded retries). A patch
the sandbox rejects is only told to the model, never to stdout, and the run exits 0:
`check` finds it in the session's rollout file and fails the run."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from services.executor_runner.adapters.base import (
    Adapter,
    Parsed,
    RunPaths,
    as_int_usage,
    fail,
    json_event,
)
from services.executor_runner.executors import AgentResult
from services.executor_runner.process import ProcessOutcome

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_TOOL_OUTPUTS = ("custom_tool_call_output", "function_call_output")
_REJECTED = "patch rejected"


def config_toml(base_url: str) -> str:
    """JSON strings are valid TOML basic strings: json.dumps quotes the URL safely."""
    return "\n".join([
        'model_provider = "zloth"',
        "check_for_update_on_startup = false",
        "[analytics]",
        "enabled = false",
        "[model_providers.zloth]",
        'name = "zloth"',
        f"base_url = {json.dumps(base_url)}",
        'env_key = "OPENAI_API_KEY"',
        'wire_api = "responses"',
        "request_max_retries = 2",
        "stream_max_retries = 2",
        "",
    ])


def _item_text(item: dict[str, Any]) -> str:
    kind, status = item.get("type"), item.get("status")
    if kind in ("agent_message", "reasoning"):
        return f"{'[reasoning] ' if kind == 'reasoning' else ''}{item.get('text') or ''}"
    if kind == "command_execution":
        code = item.get("exit_code")
        return f"[command] {item.get('command')}" + (f" → exit {code}" if code is not None else "")
    if kind == "file_change":
        changes = item.get("changes")
        changes = changes if isinstance(changes, list) else []
        paths = ", ".join(f"{c.get('kind')} {c.get('path')}" for c in changes
                          if isinstance(c, dict))
        return f"[edit {status}] {paths}"
    if kind == "error":
        return f"[warning] {item.get('message')}"
    return f"[{kind} {status or ''}] {msgspec.json.encode(item).decode()}"


class CodexAdapter(Adapter):
    # rollouts are found by id under ~/.codex/sessions from any working directory
    state_paths = (".codex/sessions",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session: str | None = None
        self.started = datetime.now(UTC)

    def prepare(self, paths: RunPaths, env: dict[str, str], session: str | None) -> None:
        self.started = datetime.now(UTC)
        config = paths.home / ".codex"
        config.mkdir(parents=True, exist_ok=True, mode=0o700)
        base_url = env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        (config / "config.toml").write_text(config_toml(base_url), encoding="utf-8")

    def parse(self, text: str) -> Parsed:
        event = json_event(text)
        if event is None:
            return "stdout", text, None
        kind = event.get("type")
        item = event.get("item") if isinstance(event.get("item"), dict) else None
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            self.session = event["thread_id"]
            return "event", f"[session] {self.session}", AgentResult(session_id=self.session)
        if item is not None:
            done = kind == "item.completed"
            if item.get("type") == "file_change" and item.get("status") == "failed":
                self.last_error = f"patch failed: {_item_text(item)}"
            summary = item.get("text") if done and item.get("type") == "agent_message" else None
            return "event", _item_text(item), AgentResult(summary=summary) if summary else None
        if kind == "turn.completed":
            usage = as_int_usage(event.get("usage"))
            return "event", f"[turn completed] {usage}", AgentResult(usage=usage)
        if kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else str(error)
            return "event", f"[turn failed] {message}", AgentResult(error=str(message))
        if kind == "error":
            self.last_error = str(event.get("message"))
            return "event", f"[error] {self.last_error}", None
        return "event", f"[{kind}]", None

    def check(
        self, outcome: ProcessOutcome, result: AgentResult | None, paths: RunPaths
    ) -> ProcessOutcome:
        outcome = super().check(outcome, result, paths)
        if outcome.outcome != "succeeded" or self.session is None:
            return outcome
        rejected = self._rejected_patches(paths.home / ".codex" / "sessions")
        if rejected:
            return fail(outcome, f"codex: {rejected[0]}")
        return outcome

    def _rejected_patches(self, sessions: Path) -> list[str]:
        """Tool outputs of this run (by timestamp: a resumed rollout holds older turns)
        that say a patch was rejected."""
        found: list[str] = []
        for rollout in sessions.rglob(f"rollout-*{self.session}.jsonl"):
            for line in rollout.read_text(encoding="utf-8", errors="replace").splitlines():
                if _REJECTED not in line:
                    continue
                try:
                    record = json.loads(line)
                    stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
                    payload = record["payload"]
                except (ValueError, KeyError, TypeError):
                    continue
                output = payload.get("output") if isinstance(payload, dict) else None
                if (payload.get("type") in _TOOL_OUTPUTS and isinstance(output, str)
                        and output.startswith(_REJECTED) and stamp >= self.started):
                    found.append(output)
        return found
