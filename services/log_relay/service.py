"""Wire log-relay: the hub (a task owning the shared feeds), the archive consumer, the
archive's retention sweep (a task), the routes. `health()` names the replica and reports
the hub's counters (clients, feeds, drops, deepest queue, feed backlog) and the last
sweep's (archives and bytes kept, removed)."""

from __future__ import annotations

from functools import partial
from typing import Any

import msgspec

from services.core.bus import Consume
from services.core.runtime import Deps, Service, Unit
from services.log_relay import NAME
from services.log_relay.api import RelayApi
from services.log_relay.archive import Archiver
from services.log_relay.hub import Hub
from services.log_relay.retention import DAY_SECONDS, ArchiveJanitor, RetentionPolicy
from services.log_relay.settings import LogRelaySettings
from services.log_relay.store import ArchiveStore


async def build(settings: LogRelaySettings, deps: Deps) -> Service:
    hub = Hub(deps.bus, settings.client_queue_chunks, settings.feed_max_pending)
    archive = ArchiveStore(deps.store)
    janitor = ArchiveJanitor(archive, retention_policy(settings))
    consumers: list[Consume[Any]] = []
    if settings.archive:
        archiver = Archiver(deps.bus, archive, settings.archive_max_bytes)
        consumers.append(archiver.registration())

    async def health() -> dict[str, Any]:
        return {"ok": deps.bus.connected, "instance": deps.instance_id,
                "hub": msgspec.to_builtins(hub.stats()),
                "archive": msgspec.to_builtins(janitor.last)}

    return Service(
        name=NAME,
        consumers=consumers,
        tasks=[hub.run, partial(janitor.run, every=settings.archive_sweep_interval_seconds)],
        routes=list(RelayApi(hub, archive, settings).routes()),
        health=health,
    )


def retention_policy(settings: LogRelaySettings) -> RetentionPolicy:
    return RetentionPolicy(
        max_age_seconds=settings.archive_retention_days * DAY_SECONDS,
        max_total_bytes=settings.archive_max_total_bytes,
        tombstone_seconds=settings.archive_tombstone_days * DAY_SECONDS,
        batch=settings.archive_sweep_batch,
    )


def unit(settings: LogRelaySettings) -> Unit:
    return Unit(name=NAME, package="services.log_relay", build=partial(build, settings))
