"""Run one or several services in one process: open each one's store, provision what it
uses, run its consumers, tasks and HTTP routes in one TaskGroup, drain on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from schemas.streams import ALL_STREAMS, STATUS_BUCKET, BucketSpec, StreamSpec
from services.core import metrics, tracing
from services.core.bus import Bus, Consume
from services.core.config import CommonSettings
from services.core.http import RequestContextMiddleware, ops_routes
from services.core.leases import Leases
from services.core.store import Store, open_lease_store, open_store
from services.core.telemetry import get_logger

Task = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass
class Service:
    """What a service's `build()` returns: explicit registrations, no import-time magic."""

    name: str
    consumers: list[Consume[Any]] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    routes: list[BaseRoute] = field(default_factory=list)
    owned_streams: list[StreamSpec] = field(default_factory=list)
    buckets: list[BucketSpec] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    health: Callable[[], Awaitable[dict[str, Any]]] | None = None
    # (stream, durable) of consumers an older version made: removed before ours are made,
    # since a work-queue stream refuses a new consumer whose filter overlaps an old one's
    retired_consumers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Deps:
    bus: Bus
    store: Store
    instance_id: str


Builder = Callable[[Deps], Awaitable[Service]]


@dataclass
class Unit:
    """A service to start: its name, the package holding its migrations, its builder."""

    name: str
    package: str
    build: Builder


def instance_id(settings: CommonSettings) -> str:
    return settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"


async def start_units(
    settings: CommonSettings, units: Sequence[Unit], bus: Bus
) -> tuple[list[Service], list[Store]]:
    services: list[Service] = []
    stores: list[Store] = []
    for unit in units:
        store = await open_store(settings, unit.name, unit.package)
        stores.append(store)
        service = await unit.build(Deps(bus=bus, store=store, instance_id=instance_id(settings)))
        await provision(bus, service, settings.stream_replicas)
        services.append(service)
    return services, stores


async def provision(bus: Bus, service: Service, replicas: int = 1) -> None:
    owned = {spec.name for spec in service.owned_streams}
    for spec in ALL_STREAMS:
        await bus.ensure_stream(spec, owner=spec.name in owned, replicas=replicas)
    for bucket in service.buckets:
        await bus.ensure_bucket(bucket)
    for stream, durable in service.retired_consumers:
        await bus.delete_consumer(stream, durable)
    for registration in service.consumers:
        await bus.ensure_consumer(registration.spec)


async def run_services(
    settings: CommonSettings,
    units: Sequence[Unit],
    nats_url: str,
    *,
    http_host: str | None = None,
    http_port: int | None = None,
    drain_seconds: float | None = None,  # default: settings.drain_seconds
    ready: Callable[[list[Service]], Awaitable[None]] | None = None,
    stopping: asyncio.Event | None = None,
    extra_tasks: Sequence[Task] = (),
) -> None:
    """Run `units` until SIGINT/SIGTERM (or `stopping`), then drain in-flight work."""
    name = "+".join(u.name for u in units)
    log = get_logger(service=name)
    if settings.tracing and not tracing.enabled():
        tracing.enable(name)
    if drain_seconds is None:
        drain_seconds = settings.drain_seconds
    stopping = stopping or asyncio.Event()
    _install_signal_handlers(stopping)
    bus = await Bus.connect(nats_url, name=name)
    services, stores = await start_units(settings, units, bus)
    holder = instance_id(settings)
    leases: dict[str, Leases] = {}
    for service in services:
        lease_store = await open_lease_store(settings, service.name)
        stores.append(lease_store)
        leases[service.name] = Leases(lease_store, holder)
    server = _http_server(services, http_host, http_port) if http_port is not None else None
    log.info("services_started", services=[s.name for s in services], http_port=http_port)
    try:
        async with asyncio.timeout(None) as drain_deadline, asyncio.TaskGroup() as group:
            for service in services:
                for registration in service.consumers:
                    registration.service = service.name
                    group.create_task(bus.consume(registration, stopping, leases[service.name]))
                for task in service.tasks:
                    group.create_task(task(stopping))
                group.create_task(report_status(bus, service, holder, stopping))
            if server is not None:
                group.create_task(_serve_http(server, stopping))
            for task in extra_tasks:
                group.create_task(task(stopping))
            if server is not None:
                await _until_listening(server)
            if ready is not None:
                await ready(services)
            await stopping.wait()
            log.info("draining", grace_seconds=drain_seconds)
            # Past the grace period, unfinished handlers are cancelled: they never ack,
            # so the broker redelivers them to another replica.
            drain_deadline.reschedule(asyncio.get_running_loop().time() + drain_seconds)
    except TimeoutError:
        log.warning("drain_grace_exceeded", grace_seconds=drain_seconds)
    finally:
        for service in services:
            for hook in service.on_stop:
                await hook()
        await bus.close()
        for store in stores:
            await store.close()
        log.info("services_stopped")


async def report_status(
    bus: Bus, service: Service, holder: str, stopping: asyncio.Event, every: float = 5.0
) -> None:
    """Keep the queue gauges fresh and publish this instance's status for `/v1/status`."""
    await bus.ensure_bucket(STATUS_BUCKET)
    log = get_logger(service=service.name)
    while not stopping.is_set():
        try:
            await _report_once(bus, service, holder)
        except Exception as exc:  # noqa: BLE001  top of a periodic unit; the next round retries
            log.warning("status_report_failed", error=str(exc))
        await sleep_or_stop(stopping, every)


async def _report_once(bus: Bus, service: Service, holder: str) -> None:
    consumers: dict[str, dict[str, int]] = {}
    for registration in service.consumers:
        spec = registration.spec
        state = await bus.consumer_state(spec.stream, spec.durable)
        metrics.queue_size.labels(spec.durable).set(state["pending"])
        metrics.queue_ack_pending.labels(spec.durable).set(state["ack_pending"])
        consumers[spec.durable] = state
    health = await service.health() if service.health else {"ok": True}
    report = {"service": service.name, "instance": holder, "at": time.time(),
              "health": health, "consumers": consumers}
    await bus.kv_put(STATUS_BUCKET.name, f"{service.name}.{holder}".replace(":", "_"),
                     msgspec.json.encode(report))


async def sleep_or_stop(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less when `stopping` is set (periodic tasks use this)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stopping.wait()


async def _until_listening(server: uvicorn.Server) -> None:
    # uvicorn offers no event for "bound and serving"; its flag flips once, early.
    async with asyncio.timeout(30):
        while not (server.started or server.should_exit):  # noqa: ASYNC110  a flag, no event
            await asyncio.sleep(0.01)


def _install_signal_handlers(stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)


def build_app(services: Sequence[Service], name: str = "zloth") -> Starlette:
    routes: list[BaseRoute] = []
    for service in services:
        routes.extend(service.routes)
    routes.extend(ops_routes(services))
    return Starlette(routes=routes, middleware=[Middleware(RequestContextMiddleware, service=name)])


class _QuietServer(uvicorn.Server):
    """The runtime owns SIGINT/SIGTERM: uvicorn must not replace its handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _http_server(services: Sequence[Service], host: str | None, port: int) -> uvicorn.Server:
    app = build_app(services, "+".join(s.name for s in services))
    config = uvicorn.Config(
        app, host=host or "127.0.0.1", port=port, log_level="warning", lifespan="off",
        access_log=False,
    )
    return _QuietServer(config)


async def _serve_http(server: uvicorn.Server, stopping: asyncio.Event) -> None:
    async def stop_when_asked() -> None:
        await stopping.wait()
        server.should_exit = True

    async with asyncio.TaskGroup() as group:
        group.create_task(stop_when_asked())
        await server.serve()
        if not server.started:
            stopping.set()
            raise OSError(f"HTTP server could not start on port {server.config.port}")
