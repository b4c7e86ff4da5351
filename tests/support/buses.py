"""Helpers to run bus consumers in tests against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from services.core.bus import Bus, Consume
from services.core.leases import Leases
from services.core.store import SqliteStore, migrate


async def open_leases(path: Path, holder: str = "test") -> tuple[Leases, SqliteStore]:
    store = await SqliteStore.open(path)
    await migrate(store, "core", "services.core.store")
    return Leases(store, holder), store


@asynccontextmanager
async def consuming(
    bus: Bus, registration: Consume[Any], leases: Leases | None
) -> AsyncIterator[asyncio.Event]:
    """Run the consumer loop in the background; stop and drain it on exit."""
    await bus.ensure_consumer(registration.spec)
    stopping = asyncio.Event()
    task = asyncio.create_task(bus.consume(registration, stopping, leases))
    try:
        yield stopping
    finally:
        stopping.set()
        async with asyncio.timeout(30):
            await task


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll a (sync or async) predicate until it is true; fail after `timeout`."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)
