"""log-relay's archive retention against a real nats-server and real SQLite: archives past
the maximum age go (the relay's own periodic sweep), the size budget evicts the oldest
archived first, a removed run's log answers 410 once the stream has dropped it too, and
runs still in the stream are served as before."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
from structlog.testing import capture_logs

from schemas.streams import LOGS
from services.core.bus import Bus
from services.core.metrics import REGISTRY
from services.core.natsd import NatsServer
from services.core.store import SqliteStore, migrate, open_store
from services.log_relay import NAME
from services.log_relay.archive import archive_run
from services.log_relay.retention import ArchiveJanitor, RetentionPolicy
from services.log_relay.settings import LogRelaySettings
from services.log_relay.store import ArchiveInfo, ArchiveStore
from services.log_relay.topics import log_subject
from tests.integration.test_log_relay import Relay, Runner, relay, stream_url
from tests.support.buses import wait_for
from tests.support.sse import read_sse


async def _finished(bus: Bus, run_id: str, chunks: int, text: str = "") -> Runner:
    runner = Runner(bus, run_id)
    for n in range(chunks):
        await runner.chunk(text or f"{run_id} line {n}")
    runner.seqs.append(await runner.end())
    return runner


async def _archive(bus: Bus, archive: ArchiveStore, runner: Runner, at: datetime) -> ArchiveInfo:
    return await archive_run(bus, archive, runner.run_id, runner.seqs[-1], "succeeded",
                             max_bytes=64 << 20, now=lambda: at)


async def _page(client: httpx.AsyncClient, relay: Relay, run_id: str) -> dict[str, Any]:
    response = await client.get(f"{relay.url}/v1/runs/{run_id}/logs", params={"limit": 1000})
    assert response.status_code == 200, response.text
    page: dict[str, Any] = msgspec.json.decode(response.content)
    return page


def _removed(reason: str) -> float:
    return REGISTRY.get_sample_value("zloth_log_archives_removed_total",
                                     {"reason": reason}) or 0.0


async def test_archives_past_the_max_age_expire_and_their_log_says_so(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    """With the default 30 days: the relay's sweep removes the archives made 40 and 31
    days ago and keeps the one made yesterday. The 40-day-old run, gone from the stream
    too, answers 410 `log_expired` naming it (history and stream); the 31-day-old run,
    still in the stream, is served whole from the stream as before; a live run and the
    recent archive are untouched. (Archiving is off: the test is the only writer.)"""
    data_dir = tmp_path / "relay"
    now = datetime.now(UTC)
    old = await _finished(bus, "run_old", 4)
    recent = await _finished(bus, "run_recent", 3)
    streamed = await _finished(bus, "run_streamed", 5)
    live = Runner(bus, "run_live")
    await live.chunks(3)
    store = await open_store(LogRelaySettings(data_dir=data_dir), NAME, "services.log_relay")
    try:
        archive = ArchiveStore(store)
        for runner, days in ((old, 40), (recent, 1), (streamed, 31)):
            await _archive(bus, archive, runner, now - timedelta(days=days))
        kept = await archive.info(recent.run_id)
    finally:
        await store.close()
    assert kept is not None
    for runner in (old, recent):  # what ZLOTH_LOGS' own max_age does after 3 days
        await bus.purge_subject(LOGS.name, log_subject(runner.run_id))
    removed_before = _removed("age")

    async with relay(nats_server, data_dir, archive=False,
                     archive_sweep_interval_seconds=0.1) as r1, httpx.AsyncClient() as client:
        async def swept() -> bool:
            return (await r1.health())["archive"] is not None

        await wait_for(swept, timeout=10)
        report = (await r1.health())["archive"]
        assert (report["removed_age"], report["removed_budget"]) == (2, 0)
        assert (report["archives"], report["bytes"]) == (1, kept.compressed_bytes)

        for path in (f"/v1/runs/{old.run_id}/logs", f"/v1/runs/{old.run_id}/logs/stream"):
            gone = await client.get(r1.url + path)
            assert gone.status_code == 410, (path, gone.text)
            error = gone.json()["error"]
            assert error["code"] == "log_expired"
            assert old.run_id in error["message"]
            assert "retention" in error["message"]

        page = await _page(client, r1, recent.run_id)
        assert (page["source"], page["complete"]) == ("archive", True)
        assert [c["id"] for c in page["chunks"]] == recent.seqs

        page = await _page(client, r1, streamed.run_id)
        assert (page["source"], page["complete"], page["archive"]) == ("stream", True, None)
        assert [c["id"] for c in page["chunks"]] == streamed.seqs
        read = await read_sse(client, stream_url(r1, streamed.run_id))
        assert read.ended == "end"
        assert [int(e.id or 0) for e in read.events] == streamed.seqs

        page = await _page(client, r1, live.run_id)
        assert (page["source"], page["complete"]) == ("stream", False)
        assert [c["id"] for c in page["chunks"]] == live.seqs
        unknown = await _page(client, r1, "run_never_heard_of")
        assert (unknown["chunks"], unknown["complete"]) == ([], False)

        metrics = (await client.get(f"{r1.url}/metrics")).text
    assert _removed("age") - removed_before == 2
    assert f"zloth_log_archive_bytes {float(kept.compressed_bytes)}" in metrics


async def test_the_size_budget_evicts_the_oldest_archived_first(
    bus: Bus, tmp_path: Path
) -> None:
    """Over the budget, archives go oldest archived first (not in the order they were
    written or named), in batches, until the total fits: the newest are kept, each
    removed run leaves a `budget` tombstone, and the sweep logs one line with the counts
    and bytes. Archiving a removed run again clears its tombstone; tombstones are
    forgotten after their own age."""
    base = datetime(2026, 3, 1, tzinfo=UTC)
    rng = random.Random(7)
    runners = [await _finished(bus, f"run_{name}", 6, "".join(rng.choices("abcdefgh ", k=3000)))
               for name in "qwerty"]
    order = [3, 0, 5, 1, 4, 2]  # runners[order[0]] was archived first
    store = await SqliteStore.open(tmp_path / "relay.sqlite3")
    try:
        await migrate(store, "core", "services.core.store")
        await migrate(store, NAME, "services.log_relay")
        archive = ArchiveStore(store)
        sizes: list[int] = []
        for minute, index in sorted(enumerate(order), key=lambda item: item[1]):
            info = await _archive(bus, archive, runners[index], base + timedelta(minutes=minute))
            sizes.append(info.compressed_bytes)
        by_age = [runners[i].run_id for i in order]
        size_of = dict(zip([r.run_id for r in runners], sizes, strict=True))
        budget = size_of[by_age[-1]] + size_of[by_age[-2]]
        policy = RetentionPolicy(max_age_seconds=0, max_total_bytes=budget,
                                 tombstone_seconds=86_400.0, batch=1)
        later = base + timedelta(hours=1)
        janitor = ArchiveJanitor(archive, policy, now=lambda: later)
        before = _removed("budget")
        with capture_logs() as logs:
            report = await janitor.sweep()

        evicted = by_age[:4]
        assert (report.removed_budget, report.removed_age, report.archives) == (4, 0, 2)
        assert report.bytes == budget
        assert report.removed_bytes == sum(size_of[run] for run in evicted)
        assert not report.over_budget
        assert _removed("budget") - before == 4
        swept = [entry for entry in logs if entry["event"] == "archive_swept"]
        assert len(swept) == 1
        assert (swept[0]["removed_budget"], swept[0]["removed_bytes"]) == (
            4, report.removed_bytes)
        for run_id in evicted:
            assert await archive.info(run_id) is None
            tombstone = await archive.expired(run_id)
            assert tombstone is not None
            assert (tombstone.reason, tombstone.expired_at) == ("budget", later)
        for run_id in by_age[4:]:
            assert await archive.info(run_id) is not None
            assert await archive.expired(run_id) is None
        assert (await janitor.sweep()).removed_budget == 0  # fits now: nothing more goes

        again = next(r for r in runners if r.run_id == evicted[0])
        await _archive(bus, archive, again, later)
        assert await archive.expired(again.run_id) is None
        # Over budget again: the oldest archived now is by_age[4], not the re-archived one.
        report = await janitor.sweep()
        assert report.removed_budget >= 1
        assert report.bytes <= budget
        assert await archive.info(by_age[4]) is None
        assert await archive.info(again.run_id) is not None

        tombstones = [r.run_id for r in runners if await archive.expired(r.run_id) is not None]
        assert len(tombstones) == 3 + report.removed_budget
        much_later = ArchiveJanitor(archive, policy, now=lambda: later + timedelta(days=2))
        assert (await much_later.sweep()).tombstones_forgotten == len(tombstones)
        assert all([await archive.expired(run_id) is None for run_id in tombstones])
    finally:
        await store.close()
