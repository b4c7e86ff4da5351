"""`GET /v1/status`: a one-screen health view assembled from what NATS knows (streams,
consumers, the executors and status buckets) and the gateway's read model (runs by state)."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from schemas.streams import ALL_STREAMS, LLM_BREAKER_BUCKET, STATUS_BUCKET
from services.core.bus import Bus
from services.core.errors import BusError
from services.core.llm.breaker import BreakerState
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
        "executors_in_use": _in_use(services),
        "breakers": await _breakers(bus),
        "disk": _disk(services),
        "services": services,
        "dead_letters": streams.get("ZLOTH_DLQ", {}).get("messages", 0),
    }


def _in_use(services: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Executor → agents running and the concurrency available, summed over runners."""
    total: dict[str, dict[str, int]] = {}
    for report in services.values():
        for name, use in (report.get("health", {}).get("executors") or {}).items():
            entry = total.setdefault(name, {"running": 0, "concurrency": 0})
            entry["running"] += int(use.get("running", 0))
            entry["concurrency"] += int(use.get("concurrency", 0))
    return total


def _disk(services: dict[str, Any]) -> dict[str, Any]:
    """Host → its workspace-manager's last disk sweep (the newest report per host)."""
    newest: dict[str, tuple[float, Any]] = {}
    for report in services.values():
        health = report.get("health", {})
        if "disk" in health and "host" in health:
            at = float(report.get("at", 0))
            if at >= newest.get(health["host"], (-1.0, None))[0]:
                newest[health["host"]] = (at, health["disk"])
    return {host: disk for host, (_, disk) in sorted(newest.items())}


async def _breakers(bus: Bus) -> dict[str, Any]:
    """Provider → its shared circuit breaker (absent: closed, never tripped)."""
    try:
        raw = await bus.kv_items(LLM_BREAKER_BUCKET.name)
    except Exception:  # noqa: BLE001  no LLM call yet: the bucket may be missing
        return {}
    found: dict[str, Any] = {}
    for provider, value in sorted(raw.items()):
        try:
            state = msgspec.json.decode(value, type=BreakerState)
        except msgspec.DecodeError:
            continue
        found[provider] = {"state": state.state, "open_until": state.open_until or None}
    return found


async def _service_reports(bus: Bus) -> dict[str, Any]:
    try:
        raw = await bus.kv_items(STATUS_BUCKET.name)
    except Exception:  # noqa: BLE001  no instance has reported yet: the bucket may be missing
        return {}
    return {key: msgspec.json.decode(value) for key, value in sorted(raw.items())}
