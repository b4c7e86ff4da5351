"""The wire formats the fake LLM provider speaks (tests/support/fake_llm.py): routes and
auth headers, request prompts, JSON bodies, SSE event sequences, rate-limit headers and
error bodies of OpenAI (Responses, Chat Completions), Anthropic Messages and Gemini."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any


def route(target: str, body: Any) -> tuple[str, str, bool] | None:
    path = target.split("?", 1)[0]
    if path == "/v1/chat/completions":
        return "openai", "chat", bool(body.get("stream"))
    if path == "/v1/responses":
        return "openai", "responses", bool(body.get("stream"))
    if path == "/v1/messages":
        return "anthropic", "messages", bool(body.get("stream"))
    if path.startswith("/v1beta/models/"):
        if path.endswith(":generateContent"):
            return "google", "generate", False
        if path.endswith(":streamGenerateContent") and "alt=sse" in target:
            return "google", "generate", True
    return None


def presented_key(provider: str, headers: dict[str, str]) -> str:
    if provider == "openai":
        return headers.get("authorization", "").removeprefix("Bearer ")
    if provider == "anthropic":
        return headers.get("x-api-key", "") if "anthropic-version" in headers else ""
    return headers.get("x-goog-api-key", "")


def prompt_of(provider: str, api: str, body: Any) -> str:
    """The user text of the request, joined: what tests key their plans on."""
    if provider == "google":
        return "\n".join(p.get("text", "") for c in body.get("contents", []) if c["role"] == "user"
                         for p in c.get("parts", []))
    items = body.get("messages") or body.get("input") or []
    return "\n".join(str(m["content"]) for m in items if m.get("role") == "user")


def rate_headers(provider: str, limit: int, remaining: int, reset: float) -> dict[str, str]:
    if provider == "openai":
        return {"x-ratelimit-limit-requests": str(limit),
                "x-ratelimit-remaining-requests": str(remaining),
                "x-ratelimit-reset-requests": f"{reset:.3f}s"}
    if provider == "anthropic":
        when = datetime.fromtimestamp(time.time() + reset, UTC).isoformat().replace("+00:00", "Z")
        return {"anthropic-ratelimit-requests-limit": str(limit),
                "anthropic-ratelimit-requests-remaining": str(remaining),
                "anthropic-ratelimit-requests-reset": when}
    return {}


def error_body(provider: str, status: int, retry_after: float | None) -> dict[str, Any]:
    message = "rate limit exceeded" if status == 429 else "the server had an error"
    if provider == "anthropic":
        kind = "rate_limit_error" if status == 429 else "overloaded_error"
        return {"type": "error", "error": {"type": kind, "message": message}}
    if provider == "google":
        error: dict[str, Any] = {"code": status, "message": message,
                                 "status": "RESOURCE_EXHAUSTED" if status == 429 else "UNAVAILABLE"}
        if retry_after is not None:
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                 "retryDelay": f"{int(retry_after)}s"}]
        return {"error": error}
    return {"error": {"message": message, "type": "server_error", "code": None}}


def json_body(provider: str, api: str, text: str, usage: tuple[int, int]) -> dict[str, Any]:
    tokens_in, tokens_out = usage
    if provider == "anthropic":
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out}}
    if provider == "google":
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": tokens_in,
                                  "candidatesTokenCount": tokens_out,
                                  "totalTokenCount": tokens_in + tokens_out}}
    if api == "chat":
        return {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                          "total_tokens": tokens_in + tokens_out}}
    return _openai_response(text, tokens_in, tokens_out)


def _openai_response(text: str, tokens_in: int, tokens_out: int) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "status": "completed", "model": "m",
            "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status":
                        "completed", "content": [{"type": "output_text", "text": text,
                                                  "annotations": []}]}],
            "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out,
                      "total_tokens": tokens_in + tokens_out}}


def _pieces(text: str) -> list[str]:
    third = max(1, len(text) // 3)
    return [text[:third], text[third: 2 * third], text[2 * third:]]


def sse_events(provider: str, api: str, text: str, usage: tuple[int, int]) -> list[bytes]:
    """The provider's event sequence; the last event is the one that says "complete"."""
    tokens_in, tokens_out = usage

    def event(name: str | None, data: Any) -> bytes:
        line = data if isinstance(data, str) else json.dumps(data)
        return (f"event: {name}\n" if name else "").encode() + f"data: {line}\n\n".encode()

    pieces = _pieces(text)
    if provider == "anthropic":
        return [
            event("message_start", {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "content": [],
                "usage": {"input_tokens": tokens_in, "output_tokens": 1}}}),
            event("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}}),
            event("ping", {"type": "ping"}),
            *[event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": p}})
              for p in pieces],
            event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                    "usage": {"output_tokens": tokens_out}}),
            event("message_stop", {"type": "message_stop"}),
        ]
    if provider == "google":
        chunks: list[dict[str, Any]] = [
            {"candidates": [{"content": {"role": "model", "parts": [{"text": p}]}}]}
            for p in pieces]
        chunks[-1]["candidates"][0]["finishReason"] = "STOP"
        chunks[-1]["usageMetadata"] = {"promptTokenCount": tokens_in,
                                       "candidatesTokenCount": tokens_out}
        return [event(None, c) for c in chunks]
    if api == "chat":
        deltas = [event(None, {"object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {"content": p}, "finish_reason": None}]}) for p in pieces]
        return [*deltas,
                event(None, {"object": "chat.completion.chunk", "choices": [
                    {"index": 0, "delta": {}, "finish_reason": "stop"}]}),
                event(None, {"object": "chat.completion.chunk", "choices": [], "usage": {
                    "prompt_tokens": tokens_in, "completion_tokens": tokens_out}}),
                event(None, "[DONE]")]
    return [
        event("response.created", {"type": "response.created", "response": {"status":
                                                                             "in_progress"}}),
        *[event("response.output_text.delta", {"type": "response.output_text.delta",
                                               "delta": p}) for p in pieces],
        event("response.completed", {"type": "response.completed",
                                     "response": _openai_response(text, tokens_in, tokens_out)}),
    ]
