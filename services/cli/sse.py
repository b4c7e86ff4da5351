"""A small Server-Sent Events reader over httpx, with reconnects from Last-Event-ID."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import msgspec


class SseEvent(msgspec.Struct, kw_only=True):
    id: str | None = None
    event: str = "message"
    data: str = ""


async def parse(
    lines: AsyncIterator[str], comments: list[str] | None = None
) -> AsyncIterator[SseEvent]:
    """Events from SSE lines (the WHATWG rules that matter here: fields, comments, blank
    line dispatch; an event without data is not dispatched). Comments go to `comments`."""
    event = SseEvent()
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                event.data = "\n".join(data)
                yield event
            event, data = SseEvent(), []
            continue
        if line.startswith(":"):
            if comments is not None:
                comments.append(line[1:].strip())
            continue
        read_field(event, data, line)


def read_field(event: SseEvent, data: list[str], line: str) -> None:
    """Apply one `name: value` line of an event (data lines collect in `data`)."""
    name, _, value = line.partition(":")
    value = value.removeprefix(" ")
    if name == "data":
        data.append(value)
    elif name == "event":
        event.event = value
    elif name == "id":
        event.id = value


async def follow(
    client: httpx.AsyncClient, url: str, *, last_event_id: str | None = None,
    retries: int = 1000, retry_delay: float = 0.5,
) -> AsyncIterator[SseEvent]:
    """Yield events until an `end` event; reconnect with Last-Event-ID when cut off."""
    for _ in range(retries):
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        try:
            async with client.stream("GET", url, headers=headers, timeout=None) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise httpx.HTTPStatusError(
                        f"{response.status_code} from {url}", request=response.request,
                        response=response,
                    )
                async for event in parse(response.aiter_lines()):
                    if event.id:
                        last_event_id = event.id
                    yield event
                    if event.event == "end":
                        return
        except (httpx.TransportError, httpx.RemoteProtocolError):
            pass
        await asyncio.sleep(retry_delay)
