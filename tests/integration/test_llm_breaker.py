"""The circuit breaker is shared by every replica through KV: two processes, one fake
provider that goes down and comes back.

Scaled 1:10 from the issue: the provider is down for 3 s (not 30 s); the breaker opens
after 3 consecutive failures within 3 s and stays open 0.5 s between half-open probes.
The behaviour is the same at full scale; only the clock runs faster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from schemas.streams import LLM_BREAKER_BUCKET
from services.core.bus import Bus
from services.core.llm import LLMClient, ProviderUnavailable, Request
from services.core.llm.breaker import Breaker, BreakerState, Pass
from services.core.natsd import NatsServer
from tests.support.fake_llm import MASTER_KEY, FakeLLM, fake_settings, secret_store, settings_json
from tests.support.llm_replica import Replica

DOWN_SECONDS = 3.0
OPEN_SECONDS = 0.5
BREAKER = {"breaker_failures": 3, "breaker_window_seconds": 3.0,
           "breaker_open_seconds": OPEN_SECONDS, "breaker_probe_seconds": 1.5,
           "max_attempts": 2}


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    try:
        yield server
    finally:
        server.stop()



def ask(prompt: str) -> Request:
    return Request(provider="anthropic", model="m", prompt=prompt, cache=False,
                   deadline_seconds=5.0)


async def call_here(client: LLMClient, prompt: str) -> dict[str, Any]:
    started = time.monotonic()
    try:
        await client.complete(ask(prompt))
    except ProviderUnavailable:
        return {"ok": False, "error": "ProviderUnavailable", "elapsed": time.monotonic() - started}
    except Exception as exc:  # noqa: BLE001  the test records every outcome, then checks
        return {"ok": False, "error": type(exc).__name__, "elapsed": time.monotonic() - started}
    return {"ok": True, "error": None, "elapsed": time.monotonic() - started}


async def test_an_outage_opens_the_breaker_in_every_replica(
    nats_server: NatsServer, bus: Bus, fake: FakeLLM
) -> None:
    """Replica A's failures open the breaker; replica B (another process) then fails fast
    without sending anything; while the provider is down only half-open probes reach it;
    after recovery a probe closes the breaker and both replicas succeed again."""
    store = await secret_store(bus)
    settings = fake_settings(fake, **BREAKER)
    replica = await Replica.start(nats_server.url, settings_json(settings), MASTER_KEY)
    try:
        async with LLMClient(settings, bus, store) as client:
            assert (await call_here(client, "A warm"))["ok"]
            assert (await replica.call(**_wire(ask("B warm"))))["ok"]

            fake.down = True
            down_at = time.monotonic()
            tripped = [await call_here(client, f"A down {i}") for i in range(3)]
            assert tripped[-1]["error"] == "ProviderUnavailable", tripped
            before_b = fake.count("B")
            first_b = await replica.call(**_wire(ask("B while open")))
            assert first_b["error"] == "ProviderUnavailable" and first_b["elapsed"] < 0.2
            assert fake.count("B") == before_b  # B sent nothing: it read A's verdict

            hits_open = len(fake.hits())
            outcomes = await _both_call_until(client, replica, down_at + DOWN_SECONDS)
            probes = len(fake.hits()) - hits_open
            fake.down = False
            unavailable = [o for o in outcomes if o["error"] == "ProviderUnavailable"]
            assert not any(o["ok"] for o in outcomes)
            assert len(unavailable) >= 30 and all(o["elapsed"] < 0.2 for o in unavailable)
            # At most one probe per open period reaches the provider, from either replica.
            assert probes <= DOWN_SECONDS / OPEN_SECONDS + 2, probes

            recovered_at = time.monotonic()
            await _until_ok(lambda: call_here(client, "A back"))
            await _until_ok(lambda: replica.call(**_wire(ask("B back"))))
            assert time.monotonic() - recovered_at < OPEN_SECONDS + 2.0
    finally:
        await replica.stop()
    entry = await bus.kv_get_entry(LLM_BREAKER_BUCKET.name, "anthropic")
    assert entry is not None
    assert msgspec.json.decode(entry.value, type=BreakerState).state == "closed"


async def _both_call_until(
    client: LLMClient, replica: Replica, until: float
) -> list[dict[str, Any]]:
    outcomes: list[dict[str, Any]] = []

    async def loop(call: Any, tag: str) -> None:
        n = 0
        while time.monotonic() < until:
            outcomes.append(await call(f"{tag} open {n}"))
            n += 1
            await asyncio.sleep(0.1)

    async with asyncio.TaskGroup() as group:
        group.create_task(loop(lambda p: call_here(client, p), "A"))
        group.create_task(loop(lambda p: replica.call(**_wire(ask(p))), "B"))
    return outcomes


async def _until_ok(call: Any) -> None:
    async with asyncio.timeout(OPEN_SECONDS + 3.0):
        while not (await call())["ok"]:
            await asyncio.sleep(0.05)


def _wire(request: Request) -> dict[str, Any]:
    return msgspec.to_builtins(request)  # type: ignore[no-any-return]


async def test_one_replica_wins_the_half_open_probe(bus: Bus) -> None:
    """Five replicas reach an open breaker whose time is up at once: compare-and-set
    lets exactly one probe; the others fail fast until the probe's lease ends."""
    await bus.ensure_bucket(LLM_BREAKER_BUCKET)
    now = [1000.0]
    settings = fake_settings(FakeLLM(), breaker_failures=1, breaker_open_seconds=5.0,
                             breaker_probe_seconds=2.0)
    replicas = [Breaker(bus, settings, f"r{i}", clock=lambda: now[0]) for i in range(5)]
    await replicas[0].record("openai", Pass(), failed=True)
    with pytest.raises(ProviderUnavailable):
        await replicas[1].admit("openai")
    now[0] += 5.0
    results = await asyncio.gather(*(r.admit("openai") for r in replicas),
                                   return_exceptions=True)
    probes = [r for r in results if isinstance(r, Pass) and r.probe]
    assert len(probes) == 1
    assert sum(isinstance(r, ProviderUnavailable) for r in results) == 4
    winner = replicas[results.index(probes[0])]
    await winner.record("openai", probes[0], failed=False)
    assert await replicas[3].admit("openai") == Pass()  # closed again, for everyone


async def test_compare_and_set_refuses_a_stale_revision(bus: Bus) -> None:
    await bus.ensure_bucket(LLM_BREAKER_BUCKET)
    bucket = LLM_BREAKER_BUCKET.name
    first = await bus.kv_create(bucket, "k", b"1")
    assert first is not None and await bus.kv_create(bucket, "k", b"x") is None
    second = await bus.kv_update(bucket, "k", b"2", first)
    assert second is not None and await bus.kv_update(bucket, "k", b"3", first) is None
    entry = await bus.kv_get_entry(bucket, "k")
    assert entry is not None and (entry.value, entry.revision) == (b"2", second)
