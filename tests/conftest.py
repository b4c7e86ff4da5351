"""Session-wide fixtures: a real nats-server per test, temp data dirs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas.streams import ALL_STREAMS
from services.core.bus import Bus
from services.core.natsd import NatsServer


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop(kill=True)


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A client of the test's server, with zloth's streams provisioned."""
    bus = await Bus.connect(nats_server.url, name="test")
    for spec in ALL_STREAMS:
        await bus.ensure_stream(spec)
    try:
        yield bus
    finally:
        await bus.close()
