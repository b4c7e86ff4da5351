"""OpenAI Responses API (`POST /v1/responses`, `stream: true`): the SSE events Codex reads.
The edit is Codex's freeform `apply_patch` custom tool (a patch in its own format)."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support.fake_providers.turns import Script

Event = tuple[str, dict[str, Any]]
_TOOL_OUTPUTS = ("custom_tool_call_output", "function_call_output")
USAGE = {
    "input_tokens": 200, "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 240,
}


def _last_is_tool_result(body: dict[str, Any]) -> bool:
    items = body.get("input") or []
    return bool(items) and isinstance(items[-1], dict) and items[-1].get("type") in _TOOL_OUTPUTS


def _patch(path: str, content: str) -> str:
    lines = "".join(f"+{line}\n" for line in content.splitlines())
    return f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n"


def reply(body: dict[str, Any], script: Script) -> list[Event]:
    """The stream for one request: an `apply_patch` call, or the final message."""
    response_id = f"resp_{uuid.uuid4().hex[:16]}"
    if script.finishes(_last_is_tool_result(body)):
        item: dict[str, Any] = {
            "type": "message", "id": f"msg_{uuid.uuid4().hex[:12]}", "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": script.text(), "annotations": []}],
        }
    else:
        # Add File fails on an existing file: a follow-up run edits a new one
        item = {
            "type": "custom_tool_call", "id": f"ctc_{uuid.uuid4().hex[:12]}",
            "call_id": f"call_{uuid.uuid4().hex[:12]}", "name": "apply_patch",
            "input": _patch(script.edit_path, script.edit_content()), "status": "completed",
        }
    response: dict[str, Any] = {"id": response_id, "object": "response",
                                "model": body.get("model"), "status": "in_progress", "output": []}
    done = {**response, "status": "completed", "output": [item], "usage": USAGE}
    text_events: list[Event] = []
    if item["type"] == "message":  # as the real API: the text in deltas, then whole
        text = item["content"][0]["text"]
        where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        text_events = [
            ("response.output_text.delta",
             {"type": "response.output_text.delta", **where, "delta": text}),
            ("response.output_text.done",
             {"type": "response.output_text.done", **where, "text": text}),
        ]
    return [
        ("response.created", {"type": "response.created", "response": response}),
        ("response.output_item.added",
         {"type": "response.output_item.added", "output_index": 0, "item": item}),
        *text_events,
        ("response.output_item.done",
         {"type": "response.output_item.done", "output_index": 0, "item": item}),
        ("response.completed", {"type": "response.completed", "response": done}),
    ]


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 429: "rate_limit_exceeded"}.get(status, "server_error")
    return {"error": {"type": kind, "code": kind, "message": message, "param": None}}
