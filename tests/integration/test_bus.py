"""The job protocol against a real nats-server: redelivery, heartbeats, fencing,
the broker-enforced concurrency cap, dedup, dead letters."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import msgspec

from schemas.streams import CMD, exec_consumer
from services.core import metrics
from services.core.bus import Bus, Consume, Delivery
from services.core.errors import Retry
from services.core.natsd import NatsServer
from services.core.runtime import Service, provision
from tests.support.buses import consuming, open_leases, wait_for
from tests.support.pingworker import Ping, ping_spec


async def test_unacked_message_is_redelivered_after_ack_wait(bus: Bus, tmp_path: Path) -> None:
    """Without heartbeats, a handler slower than ack_wait sees its message again."""
    seen: list[int] = []

    async def slow(ping: Ping, delivery: Delivery) -> None:
        seen.append(delivery.num_delivered)
        if delivery.num_delivered == 1:
            await asyncio.sleep(2.5)

    registration = Consume(ping_spec(), Ping, slow, concurrency=2, heartbeat=False, fenced=False)
    redelivered = counted("zloth_redeliveries_total", "test-ping")
    async with consuming(bus, registration, None):
        await bus.publish(Ping(n=1))
        await wait_for(lambda: 2 in seen, timeout=10)
    assert seen[:2] == [1, 2]
    assert counted("zloth_redeliveries_total", "test-ping") - redelivered >= 1


async def test_heartbeats_keep_a_long_job_from_redelivery(bus: Bus, tmp_path: Path) -> None:
    """A job running 5× ack_wait is delivered once when the bus heartbeats."""
    deliveries: list[int] = []
    done = asyncio.Event()

    async def long_job(ping: Ping, delivery: Delivery) -> None:
        deliveries.append(delivery.num_delivered)
        await asyncio.sleep(5.0)
        done.set()

    leases, store = await open_leases(tmp_path / "leases.sqlite3")
    registration = Consume(ping_spec(), Ping, long_job, concurrency=2)
    async with consuming(bus, registration, leases):
        await bus.publish(Ping(n=1))
        async with asyncio.timeout(15):
            await done.wait()
        await asyncio.sleep(1.5)  # a redelivery, were there one, would land within ack_wait
    await store.close()
    assert deliveries == [1]
    state = await bus.consumer_state("ZLOTH_CMD", "test-ping")
    assert state["pending"] == 0 and state["ack_pending"] == 0


async def test_stale_delivery_cannot_ack(bus: Bus, tmp_path: Path) -> None:
    """Delivery 1 outlives its lease; delivery 2 naks for later; delivery 1's late ack
    must not remove the message, so delivery 3 still happens."""
    seen: list[int] = []

    async def handler(ping: Ping, delivery: Delivery) -> None:
        seen.append(delivery.num_delivered)
        if delivery.num_delivered == 1:
            await asyncio.sleep(2.5)  # no heartbeat: ack_wait (1 s) expires
        elif delivery.num_delivered == 2:
            raise Retry(3.0)

    stale_before = metrics.REGISTRY.get_sample_value(
        "zloth_jobs_total", {"kind": "test-ping", "status": "ok"}
    ) or 0.0
    leases, store = await open_leases(tmp_path / "leases.sqlite3")
    registration = Consume(ping_spec(max_deliver=5), Ping, handler, concurrency=2, heartbeat=False)
    async with consuming(bus, registration, leases):
        await bus.publish(Ping(n=7))
        await wait_for(lambda: 3 in seen, timeout=15)
        await wait_for(
            lambda: bus.consumer_state("ZLOTH_CMD", "test-ping"),
            timeout=5,
        )
    await store.close()
    assert seen == [1, 2, 3]
    after = metrics.REGISTRY.get_sample_value(
        "zloth_jobs_total", {"kind": "test-ping", "status": "ok"}
    )
    assert after is not None and after >= stale_before + 2  # delivery 1 and 3 both ran to ok


async def test_max_ack_pending_caps_handlers_across_two_processes(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    """Two worker processes each willing to run 3 at once; the broker allows 3 in all."""
    cap = 3
    await bus.ensure_consumer(ping_spec(max_ack_pending=cap, ack_wait_seconds=5.0))
    outs = [tmp_path / "w1.jsonl", tmp_path / "w2.jsonl"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.pingworker", nats_server.url, str(out),
             str(cap), "0.3"],
            stdout=subprocess.PIPE,
        )
        for out in outs
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
        for n in range(18):
            await bus.publish(Ping(n=n))

        def records() -> list[dict[str, float]]:
            rows = []
            for out in outs:
                if out.exists():
                    rows += [json.loads(line) for line in out.read_text().splitlines()]
            return rows

        await wait_for(lambda: len(records()) >= 18, timeout=30)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
            if proc.stdout is not None:
                proc.stdout.close()
    rows = records()
    assert sorted(int(r["n"]) for r in rows) == list(range(18))
    assert all(out.exists() and out.read_text() for out in outs), "both processes worked"
    edges = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak <= cap
    assert peak >= 2  # the cap was reached for real, not a serial run


async def test_msg_id_deduplicates_publishes(bus: Bus) -> None:
    first = await bus.publish(Ping(n=42))
    second = await bus.publish(Ping(n=42))
    assert first == second
    assert (await bus.stream_state(CMD.name))["messages"] == 1


async def test_poison_message_is_dead_lettered_and_removed(bus: Bus, tmp_path: Path) -> None:
    """Always failing: after max_deliver it lands in the DLQ and leaves the work queue."""
    attempts: Counter[int] = Counter()

    async def broken(ping: Ping, delivery: Delivery) -> None:
        attempts[delivery.num_delivered] += 1
        raise RuntimeError("boom")

    leases, store = await open_leases(tmp_path / "leases.sqlite3")
    registration = Consume(ping_spec(max_deliver=3), Ping, broken, concurrency=1)
    dead_before = counted("zloth_dead_letters_total", "test-ping")
    async with consuming(bus, registration, leases):
        await bus.publish(Ping(n=9))
        await bus.publish_raw("zloth.cmd.test.ping", b"{not json", msg_id="garbage")
        await wait_for(
            lambda: bus.stream_state("ZLOTH_DLQ"), timeout=5
        )

        async def settled() -> bool:
            dlq = await bus.stream_state("ZLOTH_DLQ")
            cmd = await bus.stream_state(CMD.name)
            return dlq["messages"] == 2 and cmd["messages"] == 0

        await wait_for(settled, timeout=15)
    await store.close()
    assert dict(attempts) == {1: 1, 2: 1, 3: 1}
    reasons = []
    for seq in (1, 2):
        found = await bus.get_message("ZLOTH_DLQ", seq)
        assert found is not None
        reasons.append(found[1])
    decoded = [raw for raw in reasons if raw != b"{not json"]
    assert msgspec.json.decode(decoded[0])["n"] == 9
    assert b"{not json" in reasons
    assert counted("zloth_dead_letters_total", "test-ping") - dead_before == 2


async def test_sigterm_drains_in_flight_work_before_exit(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    """A worker told to stop finishes (and acks) what it holds, fetches nothing more."""
    await bus.ensure_consumer(ping_spec(max_ack_pending=4, ack_wait_seconds=5.0))
    out = tmp_path / "drain.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.pingworker", nats_server.url, str(out), "1", "2.0"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        await bus.publish(Ping(n=1))
        await wait_for(lambda: bus.consumer_state("ZLOTH_CMD", "test-ping"), timeout=5)

        async def held() -> bool:
            return (await bus.consumer_state("ZLOTH_CMD", "test-ping"))["ack_pending"] == 1

        await wait_for(held, timeout=10)
        await bus.publish(Ping(n=2))  # arrives after the stop: must stay queued
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["n"] for r in rows] == [1]  # finished although SIGTERM came mid-handler
    state = await bus.consumer_state("ZLOTH_CMD", "test-ping")
    assert state["ack_pending"] == 0  # acked, not left for redelivery
    assert state["pending"] == 1  # the second one was never taken


async def test_provisioning_retires_an_old_consumer_whose_filter_would_overlap(
    bus: Bus,
) -> None:
    """A work-queue stream refuses a consumer overlapping another's filter: an upgrade
    from shared consumers to per-host ones removes the old one first."""
    old = exec_consumer("demo-a", "h1", 2)
    old = msgspec.structs.replace(old, durable="exec-demo-a",
                                  filter_subject="zloth.cmd.exec.demo-a.>")
    await bus.ensure_consumer(old)
    new = exec_consumer("demo-a", "h1", 2)
    service = Service(name="runner", retired_consumers=[(CMD.name, "exec-demo-a")],
                      consumers=[Consume(new, Ping, _ignore)])
    await provision(bus, service)
    assert set(await bus.consumers_state(CMD.name)) == {"exec-demo-a-h1"}
    await provision(bus, service)  # again, with nothing left to retire: still fine
    assert set(await bus.consumers_state(CMD.name)) == {"exec-demo-a-h1"}


async def _ignore(message: Ping, delivery: Delivery) -> None:
    return None


def counted(name: str, kind: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"kind": kind}) or 0.0
