"""The SSE response: streams frames until they end, the client goes away, or its session is
stopped (too slow, its feed too far behind, or the relay shutting down), whichever comes
first. A write blocked longer than `write_timeout` stops the session as too slow.

A stopped session must end even while a write is blocked on a client that does not
read, so the writer is cancelled rather than asked to stop; the closing write then gets
`finish_timeout` seconds, after which the server drops the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractContextManager, aclosing

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.core.telemetry import get_logger
from services.log_relay.hub import Session

_log = get_logger(service="log-relay")

_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # no proxy buffering
_RETRY = b"retry: 1000\n\n"  # EventSource: reconnect after 1 s, not its default 3 s
_TAILS = {
    "slow": b": dropped: too far behind; reconnect with Last-Event-ID\n\n",
    "lagging": b": dropped: the relay fell behind the stream; reconnect with Last-Event-ID\n\n",
    "shutdown": b": relay shutting down; reconnect with Last-Event-ID\n\n",
}


Frames = Callable[[Session], AsyncGenerator[bytes, None]]


class EventStreamResponse(StreamingResponse):
    """`frames(session)` is called once the response starts; the session (opened by
    `open_session`) lives exactly as long as the response."""

    def __init__(
        self, open_session: Callable[[], AbstractContextManager[Session]], frames: Frames,
        *, write_timeout: float = 30.0, finish_timeout: float = 1.0,
    ) -> None:
        super().__init__(_nothing(), media_type="text/event-stream", headers=_HEADERS)
        self._open_session = open_session
        self._make_frames = frames
        self._write_timeout = write_timeout
        self._finish_timeout = finish_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._open_session() as session:
            await self._respond(session, receive, send)

    async def _respond(self, session: Session, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": _RETRY, "more_body": True})
        async with asyncio.TaskGroup() as group:
            writer = group.create_task(self._write(session, send))
            watcher = group.create_task(self._watch(session, receive, writer))
            writer.add_done_callback(lambda _: watcher.cancel())
        tail = _TAILS.get(session.reason, b"")
        try:
            async with asyncio.timeout(self._finish_timeout):
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        except TimeoutError:
            pass  # the client stopped reading: returning unfinished makes the server close it

    async def _write(self, session: Session, send: Send) -> None:
        try:
            async with aclosing(self._make_frames(session)) as frames:
                async for frame in frames:
                    try:
                        async with asyncio.timeout(self._write_timeout):
                            await send({"type": "http.response.body", "body": frame,
                                        "more_body": True})
                    except TimeoutError:
                        # Not reading at all (the mailbox bound only covers live frames;
                        # this also catches a client stalled while it catches up).
                        session.stop("slow")
                        return
        except Exception:  # noqa: BLE001  top of a unit of work: end the stream, client resumes
            _log.exception("sse_stream_failed", route=session.route)
            session.stop("error")

    async def _watch(
        self, session: Session, receive: Receive, writer: asyncio.Task[None]
    ) -> None:
        async with asyncio.TaskGroup() as group:
            gone = group.create_task(_until_disconnect(receive))
            stopped = group.create_task(session.stopped.wait())
            gone.add_done_callback(lambda _: stopped.cancel())
            stopped.add_done_callback(lambda _: gone.cancel())
        if not gone.cancelled():
            session.stop("disconnected")
        writer.cancel()


async def _nothing() -> AsyncGenerator[bytes, None]:
    return
    yield  # an (empty) async generator: StreamingResponse wants a body iterator


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
