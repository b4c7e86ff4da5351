"""log-relay against a real nats-server and real HTTP: resumable SSE across disconnects,
restarts and replicas, the end event, fan-out under a client that never reads, the
archive outliving the stream, the per-task event stream, paged history."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from schemas.logs import LogChunk, LogLine
from schemas.runs import RunState, RunStateChanged
from schemas.streams import LOGS
from services.core.bus import Bus
from services.core.natsd import NatsServer
from services.core.runtime import Service, run_services
from services.core.store import SqliteStore, migrate
from services.log_relay.archive import archive_run
from services.log_relay.service import unit
from services.log_relay.settings import LogRelaySettings
from services.log_relay.store import ArchiveStore
from tests.support.buses import wait_for
from tests.support.sse import SseRead, StalledClient, read_sse, read_sse_raw
from tests.support.stack import free_port

RUN = "run_0123456789abcdef"


@dataclass
class Relay:
    url: str
    port: int
    services: list[Service]
    stopping: asyncio.Event

    async def health(self) -> dict[str, Any]:
        assert self.services[0].health is not None
        return await self.services[0].health()

    async def hub(self) -> dict[str, int]:
        stats: dict[str, int] = (await self.health())["hub"]
        return stats


@asynccontextmanager
async def relay(nats: NatsServer, data_dir: Path, **overrides: Any) -> AsyncIterator[Relay]:
    """One log-relay replica (its own HTTP server), stopped gracefully on exit."""
    instance = f"relay-{uuid.uuid4().hex[:8]}"
    settings = LogRelaySettings(nats_url=nats.url, data_dir=data_dir, instance_id=instance,
                                **overrides)
    port = free_port()
    stopping = asyncio.Event()
    started: list[Service] = []

    async def ready(services: list[Service]) -> None:
        started.extend(services)

    task = asyncio.create_task(run_services(
        settings, [unit(settings)], nats.url, http_port=port, drain_seconds=5.0,
        ready=ready, stopping=stopping,
    ))
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as probe:
            async def up() -> bool:
                if task.done():
                    task.result()  # surface a start-up failure
                if not started:  # `ready` has not run yet
                    return False
                return await answers_as(probe, url, instance)

            await wait_for(up, timeout=10, interval=0.05)
        yield Relay(url, port, started, stopping)
    finally:
        stopping.set()
        async with asyncio.timeout(15):
            await task



@pytest.fixture
def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(20.0),
                             limits=httpx.Limits(max_connections=None))


def _line(text: str) -> LogLine:
    return LogLine(ts=datetime.now(UTC), stream="stdout", text=text)


class Runner:
    """Plays an executor-runner (chunks) and the scheduler (the end marker)."""

    def __init__(self, bus: Bus, run_id: str = RUN) -> None:
        self.bus = bus
        self.run_id = run_id
        self.seqs: list[int] = []  # stream sequences of the log chunks, in order
        self.n = 0

    async def chunk(self, *texts: str) -> int:
        self.n += 1
        lines = [_line(t) for t in texts] or [_line(f"line {self.n}")]
        seq = await self.bus.publish(
            LogChunk(run_id=self.run_id, attempt=1, seq=self.n, lines=lines)
        )
        self.seqs.append(seq)
        return seq

    async def chunks(self, count: int, pause: float = 0.0) -> None:
        for _ in range(count):
            await self.chunk()
            if pause:
                await asyncio.sleep(pause)

    async def end(self, state: str = "succeeded", dropped: int = 0) -> int:
        return await self.bus.publish(LogChunk(
            run_id=self.run_id, attempt=1, seq=self.n + 1, final=True, state=state,
            dropped=dropped,
        ))


def _log_ids(*reads: SseRead) -> list[int]:
    return [int(e.id) for r in reads for e in r.of("log") if e.id is not None]


def stream_url(relay: Relay, run_id: str = RUN) -> str:
    return f"{relay.url}/v1/runs/{run_id}/logs/stream"


async def test_history_then_live_then_end(
    nats_server: NatsServer, bus: Bus, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A client joining mid-run gets the past, then live chunks, no gap or duplicate at
    the seam, then `end`; reconnecting after the end gets the end event alone."""
    runner = Runner(bus)
    await runner.chunks(5)
    async with relay(nats_server, tmp_path / "a", keepalive_seconds=0.2) as r1, client:
        opened = asyncio.Event()
        reader = asyncio.create_task(read_sse(client, stream_url(r1), on_open=opened))
        await opened.wait()
        await runner.chunks(20, pause=0.005)
        end_seq = await runner.end("failed")
        read = await asyncio.wait_for(reader, 10)
        assert read.ended == "end"
        assert _log_ids(read) == runner.seqs
        texts = [ln["text"] for e in read.of("log") for ln in msgspec.json.decode(e.data)["lines"]]
        assert texts == [f"line {n}" for n in range(1, 26)]
        end = read.of("end")[0]
        assert end.id == str(end_seq)
        assert msgspec.json.decode(end.data) == {"run_id": RUN, "state": "failed"}

        # Last-Event-ID wins over ?after= (EventSource keeps the URL when it reconnects).
        resumed = await read_sse(client, stream_url(r1), params={"after": str(runner.seqs[3])},
                                 last_event_id=str(runner.seqs[20]))
        assert _log_ids(resumed) == runner.seqs[21:]
        by_query = await read_sse(client, stream_url(r1), params={"after": str(runner.seqs[3])})
        assert _log_ids(by_query) == runner.seqs[4:]
        again = await read_sse(client, stream_url(r1), last_event_id=str(end_seq))
        assert again.ended == "end"
        assert again.of("log") == []


async def test_waits_for_the_first_chunk_with_keepalives(
    nats_server: NatsServer, bus: Bus, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """No chunk yet: the stream stays open (keepalive comments) until chunks come."""
    runner = Runner(bus, "run_not_started_yet")
    async with relay(nats_server, tmp_path / "a", keepalive_seconds=0.1) as r1, client:
        seen = SseRead()
        reader = asyncio.create_task(read_sse(client, stream_url(r1, runner.run_id), into=seen))
        await wait_for(lambda: seen.comments.count("keepalive") >= 2, timeout=5)
        await runner.chunks(3)
        await runner.end()
        read = await asyncio.wait_for(reader, 10)
    assert _log_ids(read) == runner.seqs
    assert read.ended == "end"


async def _attached(relay: Relay, count: int) -> bool:
    return (await relay.hub())["attached"] >= count


async def _resume_until_end(
    client: httpx.AsyncClient, urls: Sequence[str], hang_up_after: int
) -> list[SseRead]:
    """Read from each url in turn, hanging up after `hang_up_after` events on all but the
    last, resuming with Last-Event-ID; the last read runs to the end event."""
    reads: list[SseRead] = []
    last: str | None = None
    for i, url in enumerate(urls):
        final = i == len(urls) - 1
        read = await read_sse(client, url, last_event_id=last,
                              hang_up_after=None if final else hang_up_after)
        reads.append(read)
        last = read.last_id or last
    return reads


async def test_resume_after_disconnect_is_exact(
    nats_server: NatsServer, bus: Bus, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Disconnecting twice mid-run and resuming: the union is the log, in order, once."""
    runner = Runner(bus)

    async def produce() -> None:
        await runner.chunks(60, pause=0.003)
        await runner.end()

    async with relay(nats_server, tmp_path / "a") as r1, client:
        producing = asyncio.create_task(produce())
        reads = await _resume_until_end(client, [stream_url(r1)] * 3, hang_up_after=15)
        await producing
    assert [r.ended for r in reads] == ["hung_up", "hung_up", "end"]
    assert _log_ids(*reads) == runner.seqs


async def test_resume_across_restart_and_replicas(
    nats_server: NatsServer, bus: Bus, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Resumed on a second replica, then on a restarted first one (the first replica
    stops mid-stream): the union is still exactly the log."""
    runner = Runner(bus)

    async def produce() -> None:
        await runner.chunks(80, pause=0.003)
        await runner.end()

    async with client, relay(nats_server, tmp_path / "b") as second:
        async with relay(nats_server, tmp_path / "a") as first:
            producing = asyncio.create_task(produce())
            seen = SseRead()
            cut = asyncio.create_task(read_sse(client, stream_url(first), into=seen))
            await wait_for(lambda: len(seen.of("log")) >= 10, timeout=5)
        # `first` stopped while streaming: its response ended without an end event.
        reads = [await asyncio.wait_for(cut, 5)]
        assert reads[0].ended == "closed"
        assert "relay shutting down" in reads[0].comments[-1]
        reads.append(await read_sse(client, stream_url(second), hang_up_after=20,
                                    last_event_id=reads[0].last_id))
        async with relay(nats_server, tmp_path / "a") as restarted:
            reads.append(await read_sse(client, stream_url(restarted),
                                        last_event_id=reads[-1].last_id))
        await producing
    assert [r.ended for r in reads] == ["closed", "hung_up", "end"]
    assert all(r.of("log") for r in reads)
    assert _log_ids(*reads) == runner.seqs


async def test_clients_joining_a_busy_run_see_no_gap_or_duplicate(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    """Clients join while chunks pour in, from various earlier ids: each catches up from
    the stream and attaches to the moving shared feed with nothing missing or doubled."""
    runner = Runner(bus)
    path = f"/v1/runs/{RUN}/logs/stream"
    async with relay(nats_server, tmp_path / "a") as r1:
        readers: list[tuple[int, asyncio.Task[SseRead]]] = []
        for n in range(200):
            await runner.chunk()
            if n % 8 == 5:
                after = runner.seqs[(n * 7) % len(runner.seqs)] if n % 16 == 5 else 0
                task = asyncio.create_task(read_sse_raw(
                    "127.0.0.1", r1.port, path, last_event_id=str(after) if after else None))
                readers.append((after, task))
        await runner.end()
        reads = await asyncio.wait_for(asyncio.gather(*(t for _, t in readers)), 20)
        stats = await r1.hub()
    assert stats["feeds"] == 0  # the last client out stopped the shared feed
    for (after, _), read in zip(readers, reads, strict=True):
        assert read.ended == "end"
        assert _log_ids(read) == [s for s in runner.seqs if s > after]


async def test_a_client_stalled_while_catching_up_is_dropped(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    """A client that stops reading during its catch-up (not yet behind a mailbox) is
    dropped once a write stays blocked for the write timeout."""
    runner = Runner(bus)
    for _ in range(100):
        await runner.chunk("h" * 10_000)
    async with relay(nats_server, tmp_path / "a", client_write_timeout_seconds=0.3) as r1:
        stalled = StalledClient("127.0.0.1", r1.port, f"/v1/runs/{RUN}/logs/stream")
        await stalled.open()
        try:
            await wait_for(lambda: _hub_says(r1, dropped_total=1), timeout=10)
            await wait_for(lambda: _hub_says(r1, sessions=0, feeds=0), timeout=5)
        finally:
            stalled.close()


async def _hub_says(relay: Relay, **expected: int) -> bool:
    stats = await relay.hub()
    return all(stats[key] == value for key, value in expected.items())


async def test_many_clients_and_one_that_never_reads(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    """200 clients on one run and one that never reads: the stalled one is dropped once
    its bounded queue is full (no queue ever exceeds the bound), the 200 get every
    chunk, and the dropped one can resume."""
    bound = 16
    runner = Runner(bus)
    path = f"/v1/runs/{RUN}/logs/stream"
    async with relay(nats_server, tmp_path / "a", client_queue_chunks=bound) as r1:
        stalled = StalledClient("127.0.0.1", r1.port, path)
        await stalled.open()
        readers = [asyncio.create_task(read_sse_raw("127.0.0.1", r1.port, path))
                   for _ in range(200)]
        await wait_for(lambda: _attached(r1, 201), timeout=20)
        started = time.monotonic()
        # How much the kernel buffers for the stalled socket before writes block varies
        # by machine: publish until the hub reports the drop (4 KB chunks, ~100 needed).
        while (await r1.hub())["dropped_total"] == 0:
            assert len(runner.seqs) < 1000, "the stalled client was never dropped"
            for _ in range(10):
                await runner.chunk("x" * 4000)
        await runner.chunks(10)
        await runner.end()
        reads = await asyncio.wait_for(asyncio.gather(*readers), 40)
        elapsed = time.monotonic() - started
        stats = await r1.hub()
        stalled.close()
        async with httpx.AsyncClient() as client:
            resumed = await read_sse(client, stream_url(r1), last_event_id="0")
    print(f"fan-out: 200 clients x {len(runner.seqs)} chunks in {elapsed:.2f}s; hub {stats}")
    assert all(r.ended == "end" and _log_ids(r) == runner.seqs for r in reads)
    assert stats["dropped_total"] == 1
    assert stats["peak_queue"] <= bound
    assert _log_ids(resumed) == runner.seqs


async def _history(client: httpx.AsyncClient, relay: Relay, run_id: str = RUN,
                   **params: int) -> dict[str, Any]:
    response = await client.get(f"{relay.url}/v1/runs/{run_id}/logs", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = msgspec.json.decode(response.content)
    return page


async def test_capped_log_is_archived_and_outlives_the_stream(
    nats_server: NatsServer, bus: Bus, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A run that printed ~50 MB: the runner kept 10 MiB of lines and counted the rest
    as dropped. Its log is archived compressed; once purged from the stream, history
    pages and the SSE stream are served whole from the archive."""
    runner = Runner(bus)
    width, per_chunk, chunks = 100, 640, 164  # 164 chunks of 640 lines of 100 bytes
    sent: list[str] = []
    for c in range(chunks):
        texts = [f"{c:04d}:{i:04d} " + "lorem ipsum dolor sit amet "[: (c + i) % 27] * 4
                 for i in range(per_chunk)]
        texts = [t.ljust(width, ".") for t in texts]
        sent += texts
        await runner.chunk(*texts)
    dropped = (50 << 20) // width - len(sent)
    end_seq = await runner.end("succeeded", dropped=dropped)
    assert len(sent) * width >= 10 << 20

    async with relay(nats_server, tmp_path / "a") as r1, client:
        async def archived() -> bool:
            page = await _history(client, r1, limit=1)
            return bool(page["source"] == "archive")

        await wait_for(archived, timeout=20, interval=0.1)
        await bus.purge_subject(LOGS.name, f"zloth.logs.{RUN}")
        assert await bus.last_message(LOGS.name, f"zloth.logs.{RUN}") is None

        pages, lines, after = [], [], 0
        while True:
            page = await _history(client, r1, after=after, limit=1000)
            pages.append(page)
            lines += [ln["text"] for chunk in page["chunks"] for ln in chunk["lines"]]
            after = page["next_after"]
            if page["complete"]:
                break
        streamed = await read_sse(client, stream_url(r1))
    info = pages[0]["archive"]
    print(f"archive: {info}; {len(pages)} pages")
    assert lines == sent
    assert pages[-1]["chunks"][-1] == {
        "id": end_seq, "attempt": 1, "seq": chunks + 1, "lines": [], "dropped": dropped,
        "final": True, "state": "succeeded",
    }
    assert all(p["source"] == "archive" for p in pages)
    assert len(pages) > 1
    assert info["compressed_bytes"] < info["raw_bytes"] // 4
    assert info["raw_bytes"] >= 10 << 20
    assert info["last_seq"] == end_seq
    # The final chunk carries `dropped`, so it is also a `log` event, just before `end`.
    assert _log_ids(streamed) == [*runner.seqs, end_seq]
    assert streamed.ended == "end"
    assert msgspec.json.decode(streamed.of("log")[-1].data)["dropped"] == dropped


def _changed(task_id: str, run_id: str, state: RunState, version: int) -> RunStateChanged:
    return RunStateChanged(run_id=run_id, task_id=task_id, executor="claude", state=state,
                           version=version, attempt=1, at=datetime.now(UTC))


async def test_task_event_stream_follows_all_runs_of_a_task(
    nats_server: NatsServer, bus: Bus, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """One connection sees every state change of the task's runs, in order, and none of
    another task's; it resumes after Last-Event-ID like the log stream."""
    task, other = "task_a", "task_b"
    past = [_changed(task, "run_1", "queued", 1), _changed(other, "run_9", "queued", 1),
            _changed(task, "run_2", "queued", 1), _changed(task, "run_1", "preparing", 2)]
    live = [_changed(task, "run_2", "preparing", 2), _changed(other, "run_9", "running", 2),
            _changed(task, "run_1", "running", 3), _changed(task, "run_1", "succeeded", 4)]
    seqs = {}
    for change in past:
        seqs[change.msg_id()] = await bus.publish(change)
    url = f"/v1/tasks/{task}/events/stream"
    async with relay(nats_server, tmp_path / "a") as r1, client:
        seen = SseRead()
        reader = asyncio.create_task(read_sse(client, r1.url + url, into=seen,
                                              hang_up_after=6))
        await wait_for(lambda: len(seen.of("run")) == 3, timeout=5)
        for change in live:
            seqs[change.msg_id()] = await bus.publish(change)
        first = await asyncio.wait_for(reader, 5)
        resumed = await read_sse(client, r1.url + url, hang_up_after=2,
                                 last_event_id=first.of("run")[3].id)
    mine = [c for c in past + live if c.task_id == task]
    got = [msgspec.json.decode(e.data, type=RunStateChanged) for e in first.of("run")]
    assert [(c.run_id, c.state) for c in got] == [(c.run_id, c.state) for c in mine]
    assert [int(e.id or 0) for e in first.of("run")] == [seqs[c.msg_id()] for c in mine]
    assert [e.id for e in resumed.of("run")] == [e.id for e in first.of("run")[4:]]


async def test_history_pages_from_the_stream(
    nats_server: NatsServer, bus: Bus, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Before the run ends: pages in order, `complete` false; after its end marker the
    last page says complete. Bad ids and parameters are 422s naming the field."""
    runner = Runner(bus)
    await runner.chunks(7)
    async with relay(nats_server, tmp_path / "a", archive=False) as r1, client:
        first = await _history(client, r1, limit=3)
        rest = await _history(client, r1, after=first["next_after"], limit=10)
        assert [c["id"] for c in first["chunks"] + rest["chunks"]] == runner.seqs
        assert not first["complete"]
        assert not rest["complete"]
        assert rest["source"] == "stream"
        end_seq = await runner.end("canceled")
        tail = await _history(client, r1, after=rest["next_after"])
        assert [c["id"] for c in tail["chunks"]] == [end_seq]
        assert tail["complete"]
        empty = await _history(client, r1, "run_unknown")
        assert empty["chunks"] == []
        assert not empty["complete"]
        assert empty["next_after"] == 0
        for url, field in [(f"/v1/runs/{RUN}/logs?limit=0", "limit"),
                           (f"/v1/runs/{RUN}/logs?after=-1", "after"),
                           ("/v1/runs/a.b/logs", "run_id"),
                           ("/v1/tasks/*/events/stream", "task_id")]:
            response = await client.get(r1.url + url)
            assert response.status_code == 422, url
            assert response.json()["error"]["field"] == field
        bad_header = await client.get(r1.url + f"/v1/runs/{RUN}/logs/stream",
                                      headers={"last-event-id": "x"})
        assert bad_header.status_code == 422


async def test_archiving_is_idempotent_and_capped(bus: Bus, tmp_path: Path) -> None:
    """Archiving a run twice (a redelivered end marker) writes it once; past the byte cap
    the middle is cut but the end marker is kept, and the archive says so."""
    runner = Runner(bus)
    for _ in range(30):
        await runner.chunk("z" * 1000)
    end_seq = await runner.end("failed")
    store = await SqliteStore.open(tmp_path / "relay.sqlite3")
    try:
        await migrate(store, "core", "services.core.store")
        await migrate(store, "log-relay", "services.log_relay")
        archive = ArchiveStore(store)
        first = await archive_run(bus, archive, RUN, end_seq, "failed", max_bytes=1 << 20,
                                  now=lambda: datetime.now(UTC))
        again = await archive_run(bus, archive, RUN, end_seq, "failed", max_bytes=1 << 20,
                                  now=lambda: datetime.now(UTC))
        assert again == first
        assert (first.chunks, first.last_seq, first.truncated) == (31, end_seq, False)
        assert [c.id async for c in archive.chunks(RUN, 25)] == [*runner.seqs[25:], end_seq]

        await store.execute("DELETE FROM log_archives")
        cut = await archive_run(bus, archive, RUN, end_seq, "failed", max_bytes=10_000,
                                now=lambda: datetime.now(UTC))
        kept = [c async for c in archive.chunks(RUN, 0)]
        assert cut.truncated
        assert 1 < cut.chunks < 31
        assert kept[-1].final
        assert kept[-1].id == end_seq
    finally:
        await store.close()


async def answers_as(probe: httpx.AsyncClient, url: str, instance: str) -> bool:
    """The relay at `url` is up and is ours, not whatever else grabbed the port first
    (tests run in parallel)."""
    try:
        response = await probe.get(f"{url}/healthz")
    except httpx.TransportError:
        return False
    answered = response.json().get("services", {}).get("log-relay", {})
    return bool(answered.get("instance") == instance)
