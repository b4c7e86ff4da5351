"""Server-Sent Events clients for tests: a parser, a reader that can hang up after n events
(to test resuming), and a client that sends its request and then never reads."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Literal

import httpx

from services.cli.sse import SseEvent, parse, read_field


@dataclass
class SseRead:
    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended: Literal["end", "closed", "hung_up"] = "closed"  # end event, server closed, we left

    @property
    def last_id(self) -> str | None:
        ids = [e.id for e in self.events if e.id is not None]
        return ids[-1] if ids else None

    def of(self, kind: str) -> list[SseEvent]:
        return [e for e in self.events if e.event == kind]


async def read_sse(
    client: httpx.AsyncClient, url: str, *, last_event_id: str | None = None,
    hang_up_after: int | None = None, params: dict[str, str] | None = None,
    on_open: asyncio.Event | None = None, into: SseRead | None = None,
) -> SseRead:
    """Read `url` until an `end` event, the server closing, or (`hang_up_after`) that
    many `log`/`run` events have been read, whereupon the client disconnects. Events
    are appended to `into` (when given) as they arrive, for a test to watch."""
    headers = {"accept": "text/event-stream"}
    if last_event_id is not None:
        headers["last-event-id"] = last_event_id
    result = into if into is not None else SseRead()
    async with client.stream("GET", url, headers=headers, params=params) as response:
        response.raise_for_status()
        if on_open is not None:
            on_open.set()
        async for item in parse(response.aiter_lines(), result.comments):
            # Unlike EventSource, `id` is only what the event itself carried; the id to
            # resume from is `last_id`, the newest one seen.
            result.events.append(item)
            if item.event == "end":
                result.ended = "end"
                return result
            data_events = sum(1 for e in result.events if e.event in ("log", "run"))
            if hang_up_after is not None and data_events >= hang_up_after:
                result.ended = "hung_up"
                return result
    return result


def parse_block(block: bytes) -> SseEvent | None:
    """One SSE event from the bytes between two blank lines (None: comments only)."""
    current = SseEvent()
    data: list[str] = []
    for raw in block.split(b"\n"):
        line = raw.decode()
        if line and not line.startswith(":"):
            read_field(current, data, line)
    if not data:
        return None
    current.data = "\n".join(data)
    return current


async def read_sse_raw(
    host: str, port: int, path: str, last_event_id: str | None = None
) -> SseRead:
    """A lean HTTP/1.1 SSE reader over asyncio streams (chunked body, no httpx): for
    tests that run hundreds of clients in one process, where parsing cost adds up."""
    reader, writer = await asyncio.open_connection(host, port)
    result = SseRead()
    try:
        resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{resume}"
                     "Accept: text/event-stream\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"chunked" in head.lower(), head
        buffer = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                return result
            buffer += (await reader.readexactly(size + 2))[:-2]
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                event = parse_block(block)
                if event is not None:
                    result.events.append(event)
                    if event.event == "end":
                        result.ended = "end"
                        return result
    finally:
        writer.close()
        await writer.wait_closed()


class StalledClient:
    """Sends a GET and never reads the response, so the server's writes soon block."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self._host = host
        self._port = port
        self._path = path
        self._sock: socket.socket | None = None

    async def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect: a tiny window and a tiny MSS (which caps how far the server's
        # kernel grows its send buffer: ~4 MB at loopback's 64 KiB MSS, ~100 KiB here).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (self._host, self._port))
        request = (f"GET {self._path} HTTP/1.1\r\nHost: {self._host}\r\n"
                   "Accept: text/event-stream\r\n\r\n").encode()
        await loop.sock_sendall(sock, request)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
