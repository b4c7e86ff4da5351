"""Anthropic Messages API (`POST /v1/messages`, `stream: true`): the SSE events Claude Code
reads. The edit is the `Write` tool, which wants an absolute path: the agent's working
directory is read from the system prompt ("Primary working directory: …")."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from tests.support.fake_providers.turns import Script

Event = tuple[str, dict[str, Any]]
_CWD = re.compile(r"[Ww]orking directory: (\S+)")
USAGE = {"input_tokens": 120, "output_tokens": 30}


def _last_is_tool_result(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or []
    if not messages or messages[-1].get("role") != "user":
        return False
    content = messages[-1].get("content")
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _cwd(body: dict[str, Any]) -> str:
    """The latest working directory mentioned: a resumed conversation also holds the
    previous run's (another workspace, where Claude Code may not write)."""
    found = _CWD.findall(json.dumps(body).replace("\\n", "\n"))
    return found[-1] if found else "."


def reply(body: dict[str, Any], script: Script) -> list[Event]:
    """The stream for one request: a `Write` tool call, or the final text."""
    model = str(body.get("model") or "claude-fake")
    start = {
        "type": "message_start",
        "message": {
            "id": f"msg_{uuid.uuid4().hex[:16]}", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": USAGE["input_tokens"], "output_tokens": 1},
        },
    }
    if script.finishes(_last_is_tool_result(body)):
        block: dict[str, Any] = {"type": "text", "text": ""}
        delta: dict[str, Any] = {"type": "text_delta", "text": script.text()}
        stop = "end_turn"
    else:
        args = {"file_path": f"{_cwd(body)}/{script.edit_path}", "content": script.edit_content()}
        block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:16]}", "name": "Write",
                 "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(args)}
        stop = "tool_use"
    return [
        ("message_start", start),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": block}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": stop, "stop_sequence": None},
                           "usage": {"output_tokens": USAGE["output_tokens"]}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 429: "rate_limit_error"}.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
