"""Gemini API (`POST /v1beta/models/<model>:streamGenerateContent?alt=sse`, and plain
`:generateContent`): what Gemini CLI reads. The edit is its `write_file` tool."""

from __future__ import annotations

from typing import Any

from tests.support.fake_providers.turns import Script

USAGE = {"promptTokenCount": 300, "candidatesTokenCount": 50, "totalTokenCount": 350}


def _last_is_tool_result(body: dict[str, Any]) -> bool:
    contents = body.get("contents") or []
    if not contents:
        return False
    parts = contents[-1].get("parts") or []
    return any(isinstance(p, dict) and "functionResponse" in p for p in parts)


def reply(body: dict[str, Any], script: Script, model: str) -> list[dict[str, Any]]:
    """The chunks for one request: a `write_file` call, or the final text."""
    if script.finishes(_last_is_tool_result(body)):
        parts: list[dict[str, Any]] = [{"text": script.text()}]
    else:
        args = {"file_path": script.edit_path, "content": script.edit_content()}
        parts = [{"functionCall": {"name": "write_file", "args": args}}]
    return [{
        "candidates": [{"content": {"role": "model", "parts": parts},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": USAGE,
        "modelVersion": model,
    }]


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED"}.get(status, "INTERNAL")
    return {"error": {"code": status, "message": message, "status": kind}}
