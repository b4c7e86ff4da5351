"""Batches one attempt's output lines into LogChunks: a chunk closes at ~max_chunk_bytes
or max_delay after its first line; past the per-run byte cap lines are dropped, announced
once, and counted on the last chunk."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from types import TracebackType

from schemas.base import utcnow
from schemas.logs import LogChunk, LogLine, LogStreamName
from services.core import metrics

__all__ = ["CAP_NOTICE", "LogBatcher"]

MiB = 1024 * 1024
CAP_NOTICE = "log cap reached: further output dropped"
_LINE_OVERHEAD = 64  # per line in the encoded chunk: keys, timestamp, quotes


def _split(text: str, limit: int) -> list[tuple[str, int]]:
    """`text` in pieces of at most `limit` UTF-8 bytes (never inside a character), each
    with its encoded size."""
    data = text.encode()
    pieces: list[tuple[str, int]] = []
    while len(data) > limit:
        cut = limit
        while cut > 1 and (data[cut] & 0xC0) == 0x80:  # continuation byte: step back
            cut -= 1
        pieces.append((data[:cut].decode(), cut))
        data = data[cut:]
    pieces.append((data.decode(), len(data)))
    return pieces


class LogBatcher:
    """Use as `async with LogBatcher(...) as logs: await logs.add(...)`. The context owns
    the flush timer and flushes on exit (not on cancellation: a shutting-down runner must
    not wait on a publish; the redelivered attempt logs anew). Chunks are emitted one at a
    time, in `seq` order, each line in the order it was added. `dropped` (the number of
    lines lost to the cap) is set on the last chunk only."""

    def __init__(
        self,
        run_id: str,
        attempt: int,
        delivery: int,
        emit: Callable[[LogChunk], Awaitable[None]],
        max_chunk_bytes: int = 64 * 1024,
        max_delay: float = 0.1,
        max_run_bytes: int = 10 * MiB,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.run_id, self.attempt, self.delivery = run_id, attempt, delivery
        self._emit, self._clock = emit, clock
        self._max_chunk, self._max_delay, self._max_run = max_chunk_bytes, max_delay, max_run_bytes
        self._max_line = max(1, max_chunk_bytes - _LINE_OVERHEAD)
        self._lines: list[LogLine] = []
        self._size = 0
        self._seq = 0
        self._run_bytes = 0
        self.dropped = 0
        self._deadline = 0.0
        self._pending = asyncio.Event()  # set while a chunk is open (lines waiting)
        self._lock = asyncio.Lock()  # one emit at a time keeps seq order
        self._timer: asyncio.Task[None] | None = None
        self._closing = False  # the timer's exit condition, should a cancellation be lost

    async def __aenter__(self) -> LogBatcher:
        self._timer = asyncio.create_task(self._flush_timer())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        timer, self._timer = self._timer, None
        failure: BaseException | None = None
        if timer is not None:
            self._closing = True
            timer.cancel()
            (failure,) = await asyncio.gather(timer, return_exceptions=True)
        if exc is None:
            async with self._lock:
                await self._flush_locked(last=True)
        elif isinstance(exc, Exception):
            # the body's error is the one to report: a publish failing now is likely its
            # consequence, so a best-effort flush must not replace it
            with contextlib.suppress(Exception):
                async with self._lock:
                    await self._flush_locked(last=True)
        if isinstance(failure, Exception) and exc is None:
            raise failure  # an emit that failed in the timer

    @property
    def seq(self) -> int:
        """The seq of the next chunk (so: how many were emitted)."""
        return self._seq

    async def add(self, stream: LogStreamName, text: str, ts: datetime | None = None) -> None:
        """Queue one line (split if longer than a chunk); may emit a full chunk."""
        if self._timer is None:
            raise RuntimeError("LogBatcher.add outside `async with`")
        if self._timer.done():
            self._timer.result()  # surface the timer's emit failure here
        at = ts or self._clock()
        async with self._lock:
            for piece, size in _split(text, self._max_line):
                if self._run_bytes + size > self._max_run or self.dropped:
                    await self._drop(at)
                    continue
                self._run_bytes += size
                await self._append(LogLine(ts=at, stream=stream, text=piece), size)

    async def flush(self) -> None:
        """Emit the open chunk now, if any."""
        async with self._lock:
            await self._flush_locked(last=False)

    async def _drop(self, at: datetime) -> None:
        if not self.dropped:  # the first dropped line: say so, once
            await self._append(LogLine(ts=at, stream="system", text=CAP_NOTICE), len(CAP_NOTICE))
        self.dropped += 1
        metrics.log_lines_dropped_total.inc()

    async def _append(self, line: LogLine, size: int) -> None:
        size += _LINE_OVERHEAD
        if self._lines and self._size + size > self._max_chunk:
            await self._flush_locked(last=False)
        if not self._lines:
            self._deadline = asyncio.get_running_loop().time() + self._max_delay
            self._pending.set()
        self._lines.append(line)
        self._size += size
        if self._size >= self._max_chunk:
            await self._flush_locked(last=False)

    async def _flush_locked(self, last: bool) -> None:
        if not self._lines and not (last and self.dropped):
            return
        chunk = LogChunk(
            run_id=self.run_id,
            attempt=self.attempt,
            seq=self._seq,
            delivery=self.delivery,
            lines=list(self._lines),
            dropped=self.dropped if last else 0,
        )
        await self._emit(chunk)  # on failure the lines stay queued for the next flush
        self._seq += 1
        self._lines.clear()
        self._size = 0
        self._pending.clear()
        for stream, count in Counter(line.stream for line in chunk.lines).items():
            metrics.log_lines_total.labels(stream=stream).inc(count)

    async def _flush_timer(self) -> None:
        """Closes each chunk max_delay after its first line."""
        loop = asyncio.get_running_loop()
        # Not `while True`: the cancel from __aexit__ can be lost inside an emit (nats-py's
        # wait_for on Python 3.11); the flag still ends the loop once the emit returns.
        while not self._closing:
            await self._pending.wait()
            delay = self._deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue  # re-check: a size flush may have opened a newer chunk meanwhile
            async with self._lock:
                if self._lines and self._deadline <= loop.time():
                    await self._flush_locked(last=False)
