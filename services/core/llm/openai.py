"""OpenAI's wire formats: the Responses API (`/v1/responses`, the default) and Chat
Completions (`/v1/chat/completions`), JSON and server-sent events."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.core.llm.request import Request, Usage
from services.core.llm.settings import ProviderSettings
from services.core.llm.wire import (
    Completion,
    HttpCall,
    RateInfo,
    StreamParser,
    Transient,
    as_int,
    error_message,
    header_retry_after,
    parse_duration,
    text_of,
)


class OpenAI:
    name = "openai"

    def build(self, request: Request, settings: ProviderSettings, api_key: str) -> HttpCall:
        headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        base = settings.base_url.rstrip("/")
        if request.api == "chat":
            return HttpCall(f"{base}/v1/chat/completions", headers, _chat_body(request),
                            request.stream)
        body: dict[str, Any] = {
            "model": request.model,
            "input": [{"role": m.role, "content": m.content}
                      for m in request.conversation() if m.role != "system"],
            "max_output_tokens": request.max_tokens,
            "store": False,
        }
        if request.system:
            body["instructions"] = request.system
        _sampling(body, request)
        if request.stream:
            body["stream"] = True
        return HttpCall(f"{base}/v1/responses", headers, body, request.stream)

    def parse(self, body: Any) -> Completion:
        if body.get("object") == "chat.completion":
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            return Completion(
                text=choice["message"].get("content") or "",
                usage=Usage(input=int(usage.get("prompt_tokens", 0)),
                            output=int(usage.get("completion_tokens", 0))),
                finish_reason=str(choice.get("finish_reason") or ""),
            )
        return _response_completion(body)

    def stream_parser(self, request: Request) -> StreamParser:
        return _ChatStream() if request.api == "chat" else _ResponsesStream()

    def rate_info(self, headers: Mapping[str, str]) -> RateInfo:
        def reset(name: str) -> float | None:
            value = headers.get(name)
            return parse_duration(value) if value else None

        return RateInfo(
            remaining_requests=as_int(headers.get("x-ratelimit-remaining-requests")),
            requests_reset=reset("x-ratelimit-reset-requests"),
            limit_requests=as_int(headers.get("x-ratelimit-limit-requests")),
            remaining_tokens=as_int(headers.get("x-ratelimit-remaining-tokens")),
            tokens_reset=reset("x-ratelimit-reset-tokens"),
            limit_tokens=as_int(headers.get("x-ratelimit-limit-tokens")),
        )

    def retry_after(self, headers: Mapping[str, str], body: Any) -> float | None:
        return header_retry_after(headers)


def _sampling(body: dict[str, Any], request: Request) -> None:
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p


def _chat_body(request: Request) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.conversation()],
        "max_completion_tokens": request.max_tokens,
    }
    _sampling(body, request)
    if request.stop:
        body["stop"] = list(request.stop)
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _response_completion(response: Any) -> Completion:
    text = "".join(
        text_of(item.get("content"), "type", "output_text")
        for item in response["output"] if item.get("type") == "message"
    )
    usage = response.get("usage") or {}
    reason = (response.get("incomplete_details") or {}).get("reason") or response.get("status")
    return Completion(
        text=text,
        usage=Usage(input=int(usage.get("input_tokens", 0)),
                    output=int(usage.get("output_tokens", 0))),
        finish_reason=str(reason or ""),
    )


class _ResponsesStream:
    """`response.output_text.delta` events, then `response.completed` (or `.incomplete`)."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._done: Completion | None = None

    def feed(self, event: str, data: str) -> None:
        payload = json.loads(data)
        kind = payload.get("type", event)
        if kind == "response.output_text.delta":
            self._parts.append(str(payload.get("delta", "")))
        elif kind in ("response.completed", "response.incomplete"):
            done = _response_completion(payload["response"])
            self._done = Completion("".join(self._parts), done.usage, done.finish_reason)
        elif kind in ("response.failed", "error"):
            message = error_message(payload.get("response", payload)) or error_message(
                {"error": payload})
            raise Transient("server_error", f"stream error event: {message or kind}")

    def finish(self) -> Completion:
        if self._done is None:
            raise Transient("stream_cut", "stream ended before response.completed")
        return self._done


class _ChatStream:
    """`chat.completion.chunk` deltas, a usage chunk, then `data: [DONE]`."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._usage = Usage()
        self._reason = ""
        self._done = False

    def feed(self, event: str, data: str) -> None:
        if data.strip() == "[DONE]":
            self._done = True
            return
        payload = json.loads(data)
        if "error" in payload:
            raise Transient("server_error", f"stream error: {error_message(payload)}")
        for choice in payload.get("choices") or []:
            self._parts.append((choice.get("delta") or {}).get("content") or "")
            self._reason = choice.get("finish_reason") or self._reason
        usage = payload.get("usage")
        if usage:
            self._usage = Usage(input=int(usage.get("prompt_tokens", 0)),
                                output=int(usage.get("completion_tokens", 0)))

    def finish(self) -> Completion:
        if not self._done:
            raise Transient("stream_cut", "stream ended before [DONE]")
        return Completion("".join(self._parts), self._usage, self._reason)
