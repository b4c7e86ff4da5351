"""Gemini CLI (`gemini -p … --output-format stream-json`): events init (session_id),
message (user / assistant; assistant text arrives in `delta` pieces), tool_use,
tool_result, error, and one result (status success | error, stats).

Its settings.json in the isolated HOME selects API-key auth and turns off telemetry,
usage statistics, auto-update and folder trust prompts. Sessions live in
~/.gemini/tmp/<project slug>/chats, and `--resume ID` only looks in the current project's:
a project directory is claimed by its `.project_root` marker (the project's path), so a
restored one is re-pointed at this run's workspace (checked in 0.61.0's ProjectRegistry)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from services.executor_runner.adapters.base import (
    Adapter,
    Parsed,
    RunPaths,
    as_int_usage,
    json_event,
)
from services.executor_runner.executors import AgentResult

SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"disableAutoUpdate": True, "disableUpdateNag": True},
}
_USAGE_KEYS = ("input_tokens", "output_tokens", "total_tokens", "cached")
# its silent retries (HTTP 429 / 5xx) are only said on stderr
_RETRY = re.compile(r"Attempt \d+ failed with status \d+")


class GeminiAdapter(Adapter):
    state_paths = (".gemini/tmp",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answer: list[str] = []  # assistant text since the last tool call

    def prepare(self, paths: RunPaths, env: dict[str, str], session: str | None) -> None:
        gemini = paths.home / ".gemini"
        gemini.mkdir(parents=True, exist_ok=True, mode=0o700)
        (gemini / "settings.json").write_text(json.dumps(SETTINGS), encoding="utf-8")
        if session:
            _adopt_project(gemini / "tmp", paths.workspace)

    def observe_stderr(self, text: str) -> None:
        super().observe_stderr(text)
        if match := _RETRY.search(text):
            self.last_error = match.group(0)

    def parse(self, text: str) -> Parsed:
        event = json_event(text)
        if event is None:
            return "stdout", text, None
        kind = event.get("type")
        if kind == "init" and isinstance(event.get("session_id"), str):
            shown = f"[init] model {event.get('model')} session {event['session_id']}"
            return "event", shown, AgentResult(session_id=event["session_id"])
        if kind == "message":
            content = str(event.get("content") or "")
            if event.get("role") == "assistant":
                self._answer.append(content)
            return "event", f"[{event.get('role')}] {content}", None
        if kind == "tool_use":
            self._answer.clear()
            params = event.get("parameters")
            params = params if isinstance(params, dict) else {}
            target = params.get("file_path") or params.get("command") or ""
            return "event", f"[tool] {event.get('tool_name')} {target}".strip(), None
        if kind == "tool_result":
            error = event.get("error")
            if error:
                self.last_error = str(error.get("message") if isinstance(error, dict) else error)
            return "event", f"[tool result] {event.get('status')} {error or ''}".strip(), None
        if kind == "error":
            self.last_error = str(event.get("message") or text)
            return "event", f"[error] {self.last_error}", None
        if kind == "result":
            return self._result(event)
        return "event", f"[{kind}] {text}", None

    def _result(self, event: dict[str, Any]) -> Parsed:
        error = event.get("error")
        message = None
        if event.get("status") != "success":
            message = str(error.get("message") if isinstance(error, dict) else error
                          or event.get("status"))
        summary = "".join(self._answer).strip() or None
        result = AgentResult(
            summary=None if message else summary,
            usage=as_int_usage(event.get("stats"), _USAGE_KEYS),
            error=message,
        )
        return "event", f"[result {event.get('status')}] {message or summary or ''}", result


def _adopt_project(tmp: Path, workspace: Path) -> None:
    """Gather the restored chats in one project directory and mark it as `workspace`'s."""
    projects = sorted(d for d in tmp.glob("*") if (d / "chats").is_dir())
    if not projects:
        return
    keep = projects[0]
    for other in projects[1:]:
        for chat in other.glob("chats/*"):
            shutil.move(str(chat), str(keep / "chats" / chat.name))
        (other / ".project_root").unlink(missing_ok=True)
    (keep / ".project_root").write_text(str(workspace), encoding="utf-8")
