"""Which executors exist right now: what runners announce (with a TTL) in the
`zloth_executors` KV bucket, read at most once a second however many requests ask."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from schemas.streams import EXECUTORS_BUCKET
from services.core.bus import Bus
from services.core.errors import BusError
from services.core.telemetry import get_logger

Announcement = dict[str, Any]
EMPTY_READS = 3


class ExecutorRegistry:
    def __init__(
        self, bus: Bus, *, bucket: str = EXECUTORS_BUCKET.name, ttl_seconds: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._bucket = bucket
        self._ttl = ttl_seconds
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._cached: dict[str, Announcement] | None = None
        self._read_at = 0.0
        self._log = get_logger(service="gateway", component="executors")

    async def announced(self) -> dict[str, Announcement]:
        """Executor name → its announcement (`name`, `concurrency`, whatever else the
        runner says). Raises BusError when the bucket cannot be read."""
        # One reader refreshes; concurrent requests wait for its answer instead of piling on.
        async with self._lock:
            fresh = self._monotonic() - self._read_at < self._ttl
            if self._cached is None or not fresh:
                self._cached = await self._read()
                self._read_at = self._monotonic()
            return self._cached

    async def _read(self) -> dict[str, Announcement]:
        items: dict[str, bytes] = {}
        # nats-py's key listing can race its own watcher and report an empty bucket that
        # is not (seen under load): an empty answer is only believed when it repeats.
        for _ in range(EMPTY_READS):
            items = await self._read_items()
            if items:
                break
        found: dict[str, Announcement] = {}
        for key, value in items.items():
            try:
                announcement = msgspec.json.decode(value)
            except msgspec.DecodeError:
                announcement = None
            if not isinstance(announcement, dict):
                self._log.warning("executor_announcement_ignored", key=key)
                continue
            name = announcement.get("name")
            name = name if isinstance(name, str) and name else key
            found[name] = {**announcement, "name": name}
        return found

    async def _read_items(self) -> dict[str, bytes]:
        try:
            return await self._bus.kv_items(self._bucket)
        except BusError:
            raise
        except Exception as exc:  # the bus leaves KV errors unmapped: any is "NATS unavailable"
            raise BusError(f"cannot read the {self._bucket} bucket: {exc}") from exc
