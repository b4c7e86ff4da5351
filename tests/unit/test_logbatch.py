"""LogBatcher: chunks close by size or by time, seq numbers, the per-run cap, metrics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import pytest

from schemas.logs import LogChunk
from services.core import metrics
from services.executor_runner import logbatch
from services.executor_runner.logbatch import CAP_NOTICE, LogBatcher

T0 = datetime(2025, 1, 1, tzinfo=UTC)


class Sink:
    """An emit callback that records chunks and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.chunks: list[LogChunk] = []
        self._arrived = asyncio.Event()

    async def __call__(self, chunk: LogChunk) -> None:
        self.chunks.append(chunk)
        self._arrived.set()

    async def wait(self, count: int, within: float = 2.0) -> None:
        async with asyncio.timeout(within):
            while len(self.chunks) < count:
                self._arrived.clear()
                await self._arrived.wait()

    def texts(self) -> list[str]:
        return [line.text for chunk in self.chunks for line in chunk.lines]


def batcher(sink: Sink, **kw: float) -> LogBatcher:
    return LogBatcher("run_1", 2, 1, sink, clock=lambda: T0, **kw)  # type: ignore[arg-type]


def test_exported_names() -> None:
    assert set(logbatch.__all__) == {"CAP_NOTICE", "LogBatcher"}


async def test_chunks_close_by_size_in_order_with_increasing_seq() -> None:
    sink = Sink()
    async with batcher(sink, max_chunk_bytes=1000, max_delay=60) as logs:
        for i in range(30):
            await logs.add("stdout", f"{i:03d}" + "x" * 97)
        assert len(sink.chunks) >= 4  # emitted while adding, no timer involved
    assert [c.seq for c in sink.chunks] == list(range(len(sink.chunks)))
    assert sink.texts() == [f"{i:03d}" + "x" * 97 for i in range(30)]
    for chunk in sink.chunks:
        assert (chunk.run_id, chunk.attempt, chunk.delivery) == ("run_1", 2, 1)
        assert len(msgspec.json.encode(chunk)) <= 1000 + 200  # ~max_chunk_bytes
        assert chunk.dropped == 0
    assert {line.ts for c in sink.chunks for line in c.lines} == {T0}


async def test_a_chunk_closes_max_delay_after_its_first_line() -> None:
    sink = Sink()
    async with batcher(sink, max_delay=0.05) as logs:
        await logs.add("stdout", "first")
        await logs.add("stderr", "second")
        await sink.wait(1)  # without leaving the context: the timer flushed it
        assert [(line.stream, line.text) for line in sink.chunks[0].lines] == [
            ("stdout", "first"),
            ("stderr", "second"),
        ]
        await logs.add("event", "third", ts=T0)
        await sink.wait(2)
        assert sink.chunks[1].seq == 1
        assert sink.texts() == ["first", "second", "third"]
    assert len(sink.chunks) == 2  # nothing left to flush on exit


async def test_exit_flushes_the_open_chunk() -> None:
    sink = Sink()
    async with batcher(sink, max_delay=60) as logs:
        await logs.add("stdout", "only")
        assert sink.chunks == []
    assert sink.texts() == ["only"]


async def test_the_cap_drops_lines_announces_once_and_counts_on_the_last_chunk() -> None:
    sink = Sink()
    dropped_before = metrics.REGISTRY.get_sample_value("zloth_log_lines_dropped_total") or 0.0
    async with batcher(sink, max_chunk_bytes=500, max_run_bytes=1000, max_delay=60) as logs:
        for i in range(25):
            await logs.add("stdout", f"{i:02d}" + "y" * 98)
    texts = sink.texts()
    assert texts[:10] == [f"{i:02d}" + "y" * 98 for i in range(10)]
    assert texts[10:] == [CAP_NOTICE]
    assert [c.dropped for c in sink.chunks[:-1]] == [0] * (len(sink.chunks) - 1)
    assert sink.chunks[-1].dropped == 15
    assert logs.dropped == 15
    dropped_after = metrics.REGISTRY.get_sample_value("zloth_log_lines_dropped_total")
    assert dropped_after == dropped_before + 15


async def test_dropped_lines_are_reported_even_when_nothing_else_is_pending() -> None:
    sink = Sink()
    async with batcher(sink, max_run_bytes=10, max_delay=0.01) as logs:
        await logs.add("stdout", "0123456789abc")
        await sink.wait(1)
    assert sink.texts() == [CAP_NOTICE]
    assert [(c.seq, c.dropped, len(c.lines)) for c in sink.chunks] == [(0, 0, 1), (1, 1, 0)]


async def test_published_lines_are_counted_by_stream() -> None:
    def published(stream: str) -> float:
        sample = metrics.REGISTRY.get_sample_value("zloth_log_lines_total", {"stream": stream})
        return sample or 0.0

    before = published("stderr")
    async with batcher(Sink()) as logs:
        for _ in range(3):
            await logs.add("stderr", "e")
    assert published("stderr") == before + 3


async def test_a_line_longer_than_a_chunk_is_split_on_character_boundaries() -> None:
    sink = Sink()
    text = "é" * 3000  # 6000 bytes
    async with batcher(sink, max_chunk_bytes=1024, max_delay=60) as logs:
        await logs.add("stdout", text)
    assert "".join(sink.texts()) == text
    assert len(sink.texts()) > 5
    assert all(len(piece.encode()) <= 1024 for piece in sink.texts())


async def test_an_emit_failure_surfaces_and_keeps_the_lines() -> None:
    calls = 0

    async def flaky(chunk: LogChunk) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("nats down")
        sink.chunks.append(chunk)

    sink = Sink()
    async with LogBatcher("run_1", 1, 1, flaky, max_delay=60) as logs:
        await logs.add("stdout", "kept")
        with pytest.raises(ConnectionError):
            await logs.flush()
    # the exit flush published what the failed one could not, under the same seq
    assert [(c.seq, [line.text for line in c.lines]) for c in sink.chunks] == [(0, ["kept"])]


async def test_a_timer_emit_failure_is_raised_on_the_next_add() -> None:
    async def broken(chunk: LogChunk) -> None:
        raise ConnectionError("nats down")

    async def keep_adding() -> None:
        async with LogBatcher("run_1", 1, 1, broken, max_delay=0.01) as logs:
            async with asyncio.timeout(2):  # a TimeoutError would mean it never surfaced
                while True:
                    await logs.add("stdout", "line")
                    await asyncio.sleep(0.01)

    with pytest.raises(ConnectionError):
        await keep_adding()


async def test_add_outside_the_context_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await LogBatcher("r", 1, 1, Sink()).add("stdout", "x")


async def test_exit_ends_the_timer_even_when_its_emit_swallows_the_cancel() -> None:
    """The timer is in an emit whose reply lands in the same loop turn as __aexit__'s
    cancel: an emit that waits with asyncio.wait_for (nats-py does) returns the reply
    and drops the cancel on Python 3.11. The context must still end, and flush once."""
    reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    emitting = asyncio.Event()
    chunks: list[LogChunk] = []

    async def emit(chunk: LogChunk) -> None:
        if not reply.done():
            emitting.set()
            await asyncio.wait_for(reply, 30)
        chunks.append(chunk)

    logs = LogBatcher("run_1", 1, 1, emit, max_delay=0.01, clock=lambda: T0)
    async with asyncio.timeout(5):  # the old `while True` timer hung here forever
        async with logs:
            await logs.add("stdout", "first")
            await emitting.wait()  # the timer is inside emit now
            reply.set_result(None)  # the reply and the cancel, in one loop turn
    assert [line.text for chunk in chunks for line in chunk.lines] == ["first"]
