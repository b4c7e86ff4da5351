"""A log-relay whose shared feed falls behind the stream: a real relay process, frozen
(SIGSTOP, the limit of CPU starvation) while a burst is published, then thawed. The
backlog is visible (hub stats, the pending gauge); past `feed_max_pending` the feed ends
its sessions and restarts, logging it; clients resume with Last-Event-ID and get every
chunk exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.core.bus import Bus
from services.core.natsd import NatsServer
from tests.integration.test_log_relay import Runner, answers_as
from tests.support.buses import wait_for
from tests.support.sse import SseRead, read_sse
from tests.support.stack import free_port

REPO = Path(__file__).resolve().parents[2]
RUN = "run_backlog"
BOUND = 50  # feed_max_pending
# ~4 KB chunks: JetStream flow control lets ~2 MB (~500 chunks) into the frozen relay's
# socket and reader; the rest waits in the stream, far more than BOUND behind.
BURST = 1500


@dataclass
class RelayProcess:
    url: str
    pid: int
    log: Path

    async def hub(self, client: httpx.AsyncClient) -> dict[str, Any]:
        response = await client.get(f"{self.url}/healthz")
        stats: dict[str, Any] = response.json()["services"]["log-relay"]["hub"]
        return stats

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        parsed = [json.loads(line) for line in lines if line.startswith("{")]
        return [entry for entry in parsed if entry.get("event") == name]


@asynccontextmanager
async def relay_process(
    nats: NatsServer, data_dir: Path, **env: str
) -> AsyncIterator[RelayProcess]:
    """`python -m services.log_relay`, configured by environment variables like in use."""
    port, instance = free_port(), f"relay-{uuid.uuid4().hex[:8]}"
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ZLOTH_NATS_URL": nats.url,
        "ZLOTH_DATA_DIR": str(data_dir), "ZLOTH_LOG_RELAY_PORT": str(port),
        "ZLOTH_INSTANCE_ID": instance, "ZLOTH_LOG_FORMAT": "json", **env,
    }
    data_dir.mkdir(parents=True)
    log = data_dir / "relay.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.log_relay", cwd=REPO, env=environ,
            stdout=sink, stderr=sink)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as probe:
            async def up() -> bool:
                assert proc.returncode is None, log.read_text()
                return await answers_as(probe, url, instance)

            await wait_for(up, timeout=20, interval=0.05)
        yield RelayProcess(url, proc.pid, log)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _log_ids(*reads: SseRead) -> list[int]:
    return [int(e.id) for r in reads for e in r.of("log") if e.id is not None]


async def _resume_until_end(client: httpx.AsyncClient, url: str, first: SseRead) -> list[SseRead]:
    reads = [first]
    while reads[-1].ended != "end":
        assert len(reads) < 20, [r.ended for r in reads]
        last = next((r.last_id for r in reversed(reads) if r.last_id), None)
        reads.append(await read_sse(client, url, last_event_id=last))
    return reads


async def test_a_feed_too_far_behind_ends_its_sessions_and_clients_lose_nothing(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    """Two clients attached to one run's feed; the relay is frozen while 1500 chunks are
    published and thawed: the feed reads messages with more than `feed_max_pending`
    behind them, so both sessions end (the "relay fell behind" comment, not the slow
    client drop), the feed restarts (one `feed_restarted` log line per restart, the
    counter in /metrics), and each client, resuming with Last-Event-ID, gets every
    chunk exactly once, in order, then the end event."""
    runner = Runner(bus, RUN)
    await runner.chunks(3)
    async with relay_process(
        nats_server, tmp_path / "relay", ZLOTH_FEED_MAX_PENDING=str(BOUND),
        ZLOTH_CLIENT_QUEUE_CHUNKS="100000",  # no slow-client drop: only the feed's lag
    ) as relay, httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        url = f"{relay.url}/v1/runs/{RUN}/logs/stream"
        seen = [SseRead(), SseRead()]
        readers = [asyncio.create_task(read_sse(client, url, into=s)) for s in seen]

        async def attached() -> bool:
            stats = await relay.hub(client)
            return bool(stats["attached"] == 2 and all(len(s.of("log")) == 3 for s in seen))

        await wait_for(attached, timeout=10)
        os.kill(relay.pid, signal.SIGSTOP)
        try:
            for _ in range(BURST):
                await runner.chunk("x" * 4000)
            end_seq = await runner.end()
        finally:
            os.kill(relay.pid, signal.SIGCONT)
        firsts = await asyncio.wait_for(asyncio.gather(*readers), 30)
        for first in firsts:
            assert first.ended == "closed"  # not "end": cut short, somewhere in the burst
            assert "relay fell behind the stream" in first.comments[-1]
        resumed = [await _resume_until_end(client, url, first) for first in firsts]
        stats = await relay.hub(client)
        metrics = (await client.get(f"{relay.url}/metrics")).text
    restarts = relay.events("feed_restarted")
    print(f"backlog: hub {stats}; reads per client {[len(r) for r in resumed]};"
          f" first reads got {[len(f.of('log')) for f in firsts]} chunks; restarts {restarts}")
    for reads in resumed:
        assert _log_ids(*reads) == runner.seqs
        assert reads[-1].of("end")[0].id == str(end_seq)
    assert stats["lagged_total"] >= 2
    assert stats["dropped_total"] == 0
    assert stats["feed_restarts"] >= 1
    assert stats["peak_pending"] > BOUND
    assert stats["pending"] == 0
    assert len(restarts) == stats["feed_restarts"]
    assert restarts[0]["pending"] > BOUND
    assert restarts[0]["sessions_ended"] == 2
    samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines()
                   if line.startswith("zloth_log_feed_"))
    assert float(samples["zloth_log_feed_restarts_total"]) == stats["feed_restarts"]
    assert float(samples["zloth_log_feed_pending_messages"]) == 0
