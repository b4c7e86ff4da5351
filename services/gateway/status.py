"""`GET /v1/status`: a one-screen health view assembled from what NATS knows (streams,
consumers, the executors and status buckets) and the gateway's read model (runs by state)."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from schemas.streams import ALL_STREAMS, STATUS_BUCKET
from services.core.bus import Bus
from services.core.errors import BusError
from services.gateway.executors import ExecutorRegistry
from services.gateway.store import GatewayStore


async def status_view(bus: Bus, store: GatewayStore, registry: ExecutorRegistry
                      ) -> dict[str, Any]:
    streams: dict[str, Any] = {}
    for spec in ALL_STREAMS:
        try:
            streams[spec.name] = {**await bus.stream_state(spec.name),
                                  "consumers": await bus.consumers_state(spec.name)}
        except (BusError, Exception) as exc:  # noqa: BLE001  a missing stream is reported
            streams[spec.name] = {"error": str(exc)}
    executors = {name: msgspec.to_builtins(info)
                 for name, info in (await registry.announced()).items()}
    services = await _service_reports(bus)
    return {
        "ok": bus.connected and all("error" not in s for s in streams.values()),
        "at": time.time(),
        "runs_by_state": await store.runs_by_state(),
        "streams": streams,
        "executors": executors,
        "services": services,
        "dead_letters": streams.get("ZLOTH_DLQ", {}).get("messages", 0),
    }


async def _service_reports(bus: Bus) -> dict[str, Any]:
    try:
        raw = await bus.kv_items(STATUS_BUCKET.name)
    except Exception:  # noqa: BLE001  no instance has reported yet: the bucket may be missing
        return {}
    return {key: msgspec.json.decode(value) for key, value in sorted(raw.items())}
