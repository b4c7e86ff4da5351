"""Wiring: `build()` assembles the gateway's routes, read-model consumer and periodic tasks
(outbox reconciler, idempotency-key expiry); `unit()` is what the runtime starts."""

from __future__ import annotations

import asyncio
from typing import Any

from schemas.base import utcnow
from schemas.runs import RunStateChanged
from schemas.streams import EXECUTORS_BUCKET, ConsumerSpec
from services.core.bus import Consume
from services.core.errors import StoreError
from services.core.runtime import Deps, Service, Unit
from services.gateway import NAME
from services.gateway.api import Api
from services.gateway.executors import ExecutorRegistry
from services.gateway.handlers import RunEvents
from services.gateway.idempotency import Idempotency
from services.gateway.outbox import Outbox, every
from services.gateway.settings import GatewaySettings
from services.gateway.store import GatewayStore

RUN_EVENTS = ConsumerSpec(
    stream="ZLOTH_EVT", durable="gateway-runs", filter_subject="zloth.evt.run.>",
    ack_wait_seconds=30, max_deliver=10, max_ack_pending=1000,
)
KEY_SWEEP_MAX_SECONDS = 60.0


async def build(settings: GatewaySettings, deps: Deps) -> Service:
    clock = utcnow
    store = GatewayStore(deps.store)
    outbox = Outbox(store, deps.bus, clock, redispatch_after=settings.redispatch_after_seconds)
    keys = Idempotency(deps.store, clock, settings.idempotency_ttl_seconds)
    api = Api(
        store=store, bus=deps.bus, registry=ExecutorRegistry(deps.bus), outbox=outbox,
        keys=keys, clock=clock, default_timeout_seconds=settings.default_timeout_seconds,
    )
    events = RunEvents(store, clock)
    key_period = min(KEY_SWEEP_MAX_SECONDS, max(0.05, settings.idempotency_ttl_seconds / 4))

    async def reconcile(stopping: asyncio.Event) -> None:
        await outbox.reconcile(stopping, settings.reconcile_seconds)

    async def expire_keys(stopping: asyncio.Event) -> None:
        await every(key_period, stopping, keys.expire, "idempotency_sweep_failed")

    async def health() -> dict[str, Any]:
        try:
            backlog = await store.outbox_backlog()
        except StoreError as exc:
            return {"ok": False, "nats": deps.bus.connected, "store": str(exc)}
        return {"ok": deps.bus.connected, "nats": deps.bus.connected, "outbox_backlog": backlog}

    return Service(
        name=NAME,
        consumers=[Consume(RUN_EVENTS, RunStateChanged, events.on_run_state_changed,
                           fenced=False)],
        tasks=[reconcile, expire_keys],
        routes=api.routes(),
        buckets=[EXECUTORS_BUCKET],
        health=health,
    )


def unit(settings: GatewaySettings) -> Unit:
    async def builder(deps: Deps) -> Service:
        return await build(settings, deps)

    return Unit(name=NAME, package="services.gateway", build=builder)
