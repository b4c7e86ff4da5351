"""Claude Code (`claude -p … --output-format stream-json --verbose`): events `system`
(init carries the session id; api_retry while the API fails), `assistant` and `user`
(content blocks: text, tool_use, tool_result) and one `result` (session_id, usage,
total_cost_usd, is_error). An API error ends with subtype "success", is_error true and
exit code 1: that run failed, with the result text as its reason."""

from __future__ import annotations

from typing import Any

import msgspec

from services.executor_runner.adapters.base import Adapter, Parsed, as_int_usage, json_event
from services.executor_runner.executors import AgentResult

_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
               "cache_read_input_tokens")


def _blocks(event: dict[str, Any]) -> list[dict[str, Any]]:
    message = event.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _block_text(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text") or "")
    if kind == "tool_use":
        args = block.get("input")
        args = args if isinstance(args, dict) else {}
        target = args.get("file_path") or args.get("command") or args.get("pattern") or ""
        return f"[tool] {block.get('name')} {target}".strip()
    if kind == "tool_result":
        content = block.get("content")
        text = content if isinstance(content, str) else msgspec.json.encode(content).decode()
        return f"[tool result{' error' if block.get('is_error') else ''}] {text}"
    if kind == "thinking":
        return f"[thinking] {block.get('thinking') or ''}".strip()
    return f"[{kind}]"


class ClaudeAdapter(Adapter):
    # sessions live in ~/.claude/projects/<cwd>/<id>.jsonl; --resume finds them by id
    # from any working directory (checked with 2.1.332)
    state_paths = (".claude/projects",)

    def parse(self, text: str) -> Parsed:
        event = json_event(text)
        if event is None:
            return "stdout", text, None
        kind = event.get("type")
        session = event.get("session_id") if isinstance(event.get("session_id"), str) else None
        if kind == "result":
            return self._result(event, session)
        if kind == "system":
            return "event", self._system(event), AgentResult(session_id=session)
        if kind in ("assistant", "user"):
            shown = " ".join(t for t in map(_block_text, _blocks(event)) if t)
            if event.get("is_api_error_message") or event.get("error"):
                self.last_error = shown or str(event.get("error"))
            return "event", shown or f"[{kind}]", AgentResult(session_id=session)
        return "event", f"[{kind}] {text}", AgentResult(session_id=session)

    def _system(self, event: dict[str, Any]) -> str:
        subtype = event.get("subtype")
        if subtype == "init":
            return f"[init] claude {event.get('claude_code_version', '')} model " \
                   f"{event.get('model', '')} session {event.get('session_id', '')}"
        error = event.get("error") or event.get("error_status")
        if error:
            self.last_error = f"{subtype}: {error}"
        return f"[{subtype}] {msgspec.json.encode(event).decode()}"

    def _result(self, event: dict[str, Any], session: str | None) -> Parsed:
        text = event.get("result") if isinstance(event.get("result"), str) else None
        subtype = str(event.get("subtype") or "")
        failed = bool(event.get("is_error")) or subtype.startswith("error")
        error = None
        if failed:
            status = event.get("api_error_status")
            error = text or subtype or "error"
            if status and str(status) not in error:
                error = f"{error} (HTTP {status})"
        cost = event.get("total_cost_usd")
        result = AgentResult(
            summary=None if failed else text,
            session_id=session,
            usage=as_int_usage(event.get("usage"), _USAGE_KEYS),
            cost_usd=float(cost) if isinstance(cost, int | float)
            and not isinstance(cost, bool) else None,
            error=error,
        )
        shown = f"[result {'error' if failed else 'ok'}] {text or subtype}"
        return "event", shown, result
