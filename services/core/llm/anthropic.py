"""Anthropic's Messages API (`/v1/messages`), JSON and server-sent events, and its
`anthropic-ratelimit-*` headers (resets are RFC 3339 instants)."""

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
    seconds_until,
    text_of,
)


class Anthropic:
    name = "anthropic"

    def build(self, request: Request, settings: ProviderSettings, api_key: str) -> HttpCall:
        headers = {
            "x-api-key": api_key,
            "anthropic-version": settings.anthropic_version,
            "content-type": "application/json",
        }
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": m.role, "content": m.content}
                         for m in request.conversation() if m.role != "system"],
        }
        if request.system:
            body["system"] = request.system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.stream:
            body["stream"] = True
        url = f"{settings.base_url.rstrip('/')}/v1/messages"
        return HttpCall(url, headers, body, request.stream)

    def parse(self, body: Any) -> Completion:
        usage = body.get("usage") or {}
        return Completion(
            text=text_of(body["content"], "type", "text"),
            usage=Usage(input=int(usage.get("input_tokens", 0)),
                        output=int(usage.get("output_tokens", 0))),
            finish_reason=str(body.get("stop_reason") or ""),
        )

    def stream_parser(self, request: Request) -> StreamParser:
        return _MessagesStream()

    def rate_info(self, headers: Mapping[str, str]) -> RateInfo:
        def reset(name: str) -> float | None:
            value = headers.get(name)
            return seconds_until(value) if value else None

        # `tokens-*` is the most restrictive of the input and output token limits.
        return RateInfo(
            remaining_requests=as_int(headers.get("anthropic-ratelimit-requests-remaining")),
            requests_reset=reset("anthropic-ratelimit-requests-reset"),
            limit_requests=as_int(headers.get("anthropic-ratelimit-requests-limit")),
            remaining_tokens=as_int(headers.get("anthropic-ratelimit-tokens-remaining")),
            tokens_reset=reset("anthropic-ratelimit-tokens-reset"),
            limit_tokens=as_int(headers.get("anthropic-ratelimit-tokens-limit")),
        )

    def retry_after(self, headers: Mapping[str, str], body: Any) -> float | None:
        return header_retry_after(headers)


class _MessagesStream:
    """message_start → content_block_* → message_delta → message_stop; `error` events
    (overloaded_error, …) can arrive after a 200."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._input = 0
        self._output = 0
        self._reason = ""
        self._done = False

    def feed(self, event: str, data: str) -> None:
        payload = json.loads(data)
        kind = payload.get("type", event)
        if kind == "message_start":
            usage = payload["message"].get("usage") or {}
            self._input = int(usage.get("input_tokens", 0))
            self._output = int(usage.get("output_tokens", 0))
        elif kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta":
                self._parts.append(str(delta.get("text", "")))
        elif kind == "message_delta":
            self._reason = (payload.get("delta") or {}).get("stop_reason") or self._reason
            self._output = int((payload.get("usage") or {}).get("output_tokens", self._output))
        elif kind == "message_stop":
            self._done = True
        elif kind == "error":
            error_type = (payload.get("error") or {}).get("type", "")
            outcome = "rate_limited" if error_type == "rate_limit_error" else "server_error"
            raise Transient(outcome, f"stream error event: {error_message(payload) or error_type}")

    def finish(self) -> Completion:
        if not self._done:
            raise Transient("stream_cut", "stream ended before message_stop")
        return Completion("".join(self._parts), Usage(input=self._input, output=self._output),
                          self._reason)
