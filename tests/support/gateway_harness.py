"""The gateway in-process against a real nats-server: its Starlette app behind httpx, its
consumer and periodic tasks running, and a fake scheduler recording what it published."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

from schemas.base import utcnow
from schemas.runs import CancelRun, RunResult, RunState, RunStateChanged, StartRun
from schemas.streams import CMD, EXECUTORS_BUCKET, ConsumerSpec
from services.core import metrics
from services.core.bus import Bus, Consume, Delivery
from services.core.config import load_settings
from services.core.runtime import build_app, start_units
from services.gateway.service import RUN_EVENTS, unit
from services.gateway.settings import GatewaySettings
from services.gateway.store import GatewayStore
from tests.support.buses import wait_for


@dataclass
class Gateway:
    client: httpx.AsyncClient
    bus: Bus  # the gateway's own connection
    store: GatewayStore
    settings: GatewaySettings

    async def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return await self.client.post(path, json=body, headers=headers)

    async def snapshot(self) -> tuple[dict[str, int], int]:
        """Every table's row count and the command stream's last sequence."""
        return await self.store.counts(), await self.bus.stream_last_seq(CMD.name)

    async def deliver(self, *events: RunStateChanged) -> None:
        """Publish `events` in this order, each stored even when it repeats an earlier one
        (a unique msg id: the read model must cope with duplicates by itself), and wait
        until the read model has handled them all."""
        before = _handled()
        for n, event in enumerate(events):
            await self.bus.publish(event, msg_id=f"{event.msg_id()}:test{n}")
        await wait_for(lambda: _handled() >= before + len(events), timeout=10)


def _handled() -> float:
    # The job counter goes up once a handler has returned (its store write done).
    labels = {"kind": RUN_EVENTS.durable, "status": "ok"}
    return metrics.REGISTRY.get_sample_value("zloth_jobs_total", labels) or 0.0


@asynccontextmanager
async def running_gateway(
    nats_url: str, data_dir: Path, **overrides: Any
) -> AsyncIterator[Gateway]:
    settings = load_settings(
        GatewaySettings, environ={}, nats_url=nats_url, data_dir=str(data_dir), **overrides
    )
    bus = await Bus.connect(nats_url, name="gateway")
    services, stores = await start_units(settings, [unit(settings)], bus)
    service = services[0]
    stopping = asyncio.Event()
    work: list[Coroutine[Any, Any, None]] = [
        bus.consume(c, stopping, None) for c in service.consumers
    ]
    work += [task(stopping) for task in service.tasks]
    tasks = [asyncio.create_task(coro) for coro in work]
    transport = httpx.ASGITransport(app=build_app(services, "gateway"))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Gateway(client, bus, GatewayStore(stores[0]), settings)
    finally:
        stopping.set()
        await _stop(tasks)
        await bus.close()
        for store in stores:
            await store.close()


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    # A consumer blocks up to a second in fetch(); tests need not wait for a graceful drain.
    _, pending = await asyncio.wait(tasks, timeout=0.2)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class FakeScheduler:
    """Plays the scheduler's part: consumes StartRun and CancelRun, keeps their headers."""

    starts: list[tuple[StartRun, Delivery]] = field(default_factory=list)
    cancels: list[tuple[CancelRun, Delivery]] = field(default_factory=list)

    async def on_start(self, msg: StartRun, delivery: Delivery) -> None:
        self.starts.append((msg, delivery))

    async def on_cancel(self, msg: CancelRun, delivery: Delivery) -> None:
        self.cancels.append((msg, delivery))


def _spec(durable: str, subject: str) -> ConsumerSpec:
    return ConsumerSpec(stream=CMD.name, durable=durable, filter_subject=subject,
                        ack_wait_seconds=5.0, max_deliver=3)


@asynccontextmanager
async def fake_scheduler(nats_url: str) -> AsyncIterator[FakeScheduler]:
    bus = await Bus.connect(nats_url, name="fake-scheduler")
    fake = FakeScheduler()
    registrations: list[Consume[Any]] = [
        Consume(_spec("fake-sched-start", f"{StartRun.subject_prefix}.>"), StartRun,
                fake.on_start, fenced=False),
        Consume(_spec("fake-sched-cancel", f"{CancelRun.subject_prefix}.>"), CancelRun,
                fake.on_cancel, fenced=False),
    ]
    stopping = asyncio.Event()
    for registration in registrations:
        await bus.ensure_consumer(registration.spec)
    tasks = [asyncio.create_task(bus.consume(r, stopping, None)) for r in registrations]
    try:
        yield fake
    finally:
        stopping.set()
        await _stop(tasks)
        await bus.close()


async def announce(bus: Bus, *executors: str, concurrency: int = 2) -> None:
    """What an executor runner does when it comes online."""
    for name in executors:
        value = {"name": name, "concurrency": concurrency, "runner_id": "runner-1"}
        await bus.kv_put(EXECUTORS_BUCKET.name, name, msgspec.json.encode(value))


def run_event(
    run_id: str, task_id: str, state: RunState, version: int, *, executor: str = "claude",
    result: RunResult | None = None, at: datetime | None = None,
) -> RunStateChanged:
    now = at or utcnow()
    return RunStateChanged(
        run_id=run_id, task_id=task_id, executor=executor, state=state, version=version,
        attempt=1, at=now, queued_at=now, result=result,
        finished_at=now if state in {"succeeded", "failed", "canceled"} else None,
    )
