"""What the provider adapters share: the HTTP call they describe, the completion they
parse, server-sent events, and the rate-limit headers every provider spells differently."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from services.core.llm.request import Request, Usage
from services.core.llm.settings import ProviderSettings


@dataclass(frozen=True)
class HttpCall:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    stream: bool = False


@dataclass
class Completion:
    text: str
    usage: Usage
    finish_reason: str = ""


@dataclass(frozen=True)
class RateInfo:
    """The provider's view of our budget (None: it did not say)."""

    remaining_requests: int | None = None
    requests_reset: float | None = None  # seconds until fully replenished
    limit_requests: int | None = None
    remaining_tokens: int | None = None
    tokens_reset: float | None = None
    limit_tokens: int | None = None


# `zloth_llm_requests_total{status}`: one per attempt; the alerts query these values
TRANSIENT_KINDS = ("rate_limited", "server_error", "timeout", "connection", "stream_cut")
REQUEST_STATUSES = ("ok", "rejected", *TRANSIENT_KINDS)


class Transient(Exception):
    """One attempt ended in an outcome worth retrying (internal to the client)."""

    def __init__(
        self, kind: str, detail: str, *, status: int = 0, retry_after: float | None = None,
        rate: RateInfo | None = None,
    ) -> None:
        if kind not in TRANSIENT_KINDS:
            raise ValueError(f"unknown transient kind {kind!r}")  # the metric label set
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.rate = rate or RateInfo()


class Refused(Exception):
    """One attempt got an answer that retrying cannot change (internal to the client)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class StreamParser(Protocol):
    def feed(self, event: str, data: str) -> None: ...  # raises Transient on an error event

    def finish(self) -> Completion: ...  # raises Transient("stream_cut") when incomplete


class Adapter(Protocol):
    """One provider's wire format (openai.py, anthropic.py, google.py)."""

    name: str

    def build(self, request: Request, settings: ProviderSettings, api_key: str) -> HttpCall: ...

    def parse(self, body: Any) -> Completion: ...

    def stream_parser(self, request: Request) -> StreamParser: ...

    def rate_info(self, headers: Mapping[str, str]) -> RateInfo: ...

    def retry_after(self, headers: Mapping[str, str], body: Any) -> float | None: ...


@dataclass
class SSEDecoder:
    """Lines of a text/event-stream in, `(event, data)` pairs out (WHATWG rules, minus
    `id`/`retry`, which no LLM provider relies on)."""

    event: str = ""
    data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> Iterator[tuple[str, str]]:
        if line == "":
            if self.data:
                yield self.event or "message", "\n".join(self.data)
            self.event, self.data = "", []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)


def header_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """`retry-after-ms` (OpenAI), else `retry-after` in seconds or as an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations ("20ms", "1.5s", "6m0s") and Google's ("30s")."""
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def seconds_until(rfc3339: str, now: float | None = None) -> float | None:
    """Anthropic's resets are RFC 3339 instants."""
    try:
        when = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def as_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def error_message(body: Any) -> str:
    """`error.message` — where OpenAI, Anthropic and Google all put it."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
    return ""


def text_of(parts: Any, kind_key: str, kind: str) -> str:
    """Concatenate the `text` of the items of `parts` whose `kind_key` is `kind`."""
    items = [p for p in parts or [] if isinstance(p, dict) and p.get(kind_key) == kind]
    return "".join(str(p.get("text", "")) for p in items)
