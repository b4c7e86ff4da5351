"""Google's Gemini API: `models/{model}:generateContent` and `:streamGenerateContent?alt=sse`;
a 429 says when to come back in the body (`google.rpc.RetryInfo.retryDelay`)."""

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
    error_message,
    header_retry_after,
    parse_duration,
)

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ROLES = {"user": "user", "assistant": "model"}


class Google:
    name = "google"

    def build(self, request: Request, settings: ProviderSettings, api_key: str) -> HttpCall:
        # The key goes in a header, never in the URL: URLs end up in error messages and logs.
        headers = {"x-goog-api-key": api_key, "content-type": "application/json"}
        config: dict[str, Any] = {"maxOutputTokens": request.max_tokens}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.stop:
            config["stopSequences"] = list(request.stop)
        body: dict[str, Any] = {
            "contents": [
                {"role": _ROLES[m.role], "parts": [{"text": m.content}]}
                for m in request.conversation() if m.role != "system"
            ],
            "generationConfig": config,
        }
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system}]}
        base = f"{settings.base_url.rstrip('/')}/v1beta/models/{request.model}"
        if request.stream:
            return HttpCall(f"{base}:streamGenerateContent?alt=sse", headers, body, True)
        return HttpCall(f"{base}:generateContent", headers, body)

    def parse(self, body: Any) -> Completion:
        parts: list[str] = []
        reason = _chunk(body, parts)
        if not body.get("candidates"):
            reason = (body.get("promptFeedback") or {}).get("blockReason") or reason
        return Completion("".join(parts), _usage(body), reason)

    def stream_parser(self, request: Request) -> StreamParser:
        return _GeminiStream()

    def rate_info(self, headers: Mapping[str, str]) -> RateInfo:
        return RateInfo()  # Gemini sends no rate-limit headers

    def retry_after(self, headers: Mapping[str, str], body: Any) -> float | None:
        found = header_retry_after(headers)
        if found is not None or not isinstance(body, dict):
            return found
        for detail in (body.get("error") or {}).get("details") or []:
            if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO:
                return parse_duration(str(detail.get("retryDelay", "")))
        return None


def _chunk(body: Any, parts: list[str]) -> str:
    """Append the first candidate's text to `parts`; return its finishReason."""
    candidates = body.get("candidates") or []
    if not candidates:
        return ""
    content = candidates[0].get("content") or {}
    parts.extend(str(p.get("text", "")) for p in content.get("parts") or [] if "text" in p)
    return str(candidates[0].get("finishReason") or "")


def _usage(body: Any) -> Usage:
    meta = body.get("usageMetadata") or {}
    return Usage(input=int(meta.get("promptTokenCount", 0)),
                 output=int(meta.get("candidatesTokenCount", 0)))


class _GeminiStream:
    """Each event is a whole GenerateContentResponse; the last carries `finishReason`."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._usage = Usage()
        self._reason = ""

    def feed(self, event: str, data: str) -> None:
        payload = json.loads(data)
        if "error" in payload:
            raise Transient("server_error", f"stream error: {error_message(payload)}")
        self._reason = _chunk(payload, self._parts) or self._reason
        if payload.get("usageMetadata"):
            self._usage = _usage(payload)

    def finish(self) -> Completion:
        if not self._reason:
            raise Transient("stream_cut", "stream ended without a finishReason")
        return Completion("".join(self._parts), self._usage, self._reason)
