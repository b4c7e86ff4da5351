"""Client-side rate limiting against a fake provider that allows N requests per window
and answers 429 above it.

Scaled 60:1 from the issue: "N requests per minute" is N = 50 per 1 s window here, and
the client's burst is 1 (its default, a second's worth, is N/60 at a minute's scale). The
limiter and the server's count work the same at any window length.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from services.core.bus import Bus
from services.core.llm import LLMClient, LLMError, Request, SecretStore
from services.core.natsd import NatsServer
from tests.support.fake_llm import FakeLLM, RateRule, fake_settings, secret_store

N = 50
WINDOW = 1.0


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_server.url, name="test-llm")
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
async def store(bus: Bus) -> SecretStore:
    return await secret_store(bus)


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM(rule=RateRule(limit=N, window=WINDOW)).start()
    try:
        yield server
    finally:
        server.stop()


def busiest_window(times: list[float], window: float) -> int:
    """The most requests that arrived within any `window` seconds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def run(client: LLMClient, calls: int, provider: str = "openai") -> list[Any]:
    async def one(n: int) -> Any:
        try:
            return await client.complete(Request(provider=provider, model="m", cache=False,
                                                 prompt=f"call {n}", deadline_seconds=30))
        except LLMError as exc:
            return exc

    async with asyncio.timeout(60):
        return await asyncio.gather(*(one(n) for n in range(calls)))


async def test_200_concurrent_calls_never_exceed_the_limit(
    bus: Bus, store: SecretStore, fake: FakeLLM
) -> None:
    """200 calls at once, limiter set to the provider's N per window: no window at the
    server ever holds more than N arrivals, and not one 429 comes back."""
    settings = fake_settings(fake, provider={"requests_per_window": N, "window_seconds": WINDOW,
                                             "burst": 1})
    async with LLMClient(settings, bus, store) as client:
        results = await run(client, 200)
    hits = fake.hits()
    assert all(not isinstance(r, LLMError) for r in results)
    assert len(hits) == 200 and all(h.status == 200 for h in hits)
    assert busiest_window([h.at for h in hits], WINDOW) <= N


async def test_without_the_limiter_the_provider_is_overrun(
    bus: Bus, store: SecretStore, fake: FakeLLM
) -> None:
    """The control for the test above: the same burst with no limiter piles more than N
    requests into one window, and 429s come back."""
    settings = fake_settings(fake, max_attempts=1, provider={"respect_rate_headers": False})
    async with LLMClient(settings, bus, store) as client:
        await run(client, 100)
    hits = fake.hits()
    assert busiest_window([h.at for h in hits], WINDOW) > N
    assert sum(h.status == 429 for h in hits) > 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("respect", [True, False], ids=["headers", "no-headers"])
async def test_rate_headers_slow_the_client_before_a_429(
    bus: Bus, store: SecretStore, provider: str, respect: bool
) -> None:
    """No client-side limit configured, a provider with a token bucket (as both document
    theirs): reading x-ratelimit-* (OpenAI: durations) or anthropic-ratelimit-* (RFC 3339
    instants), the client spends only the budget they announce, refilling at the rate
    they imply, so no 429 comes back. Ignoring the headers (the control) draws 429s."""
    fake = FakeLLM(rule=RateRule(limit=8, window=0.5, bucket=True)).start()
    try:
        settings = fake_settings(fake, max_attempts=1, provider={
            "respect_rate_headers": respect, "max_concurrency": 4})
        async with LLMClient(settings, bus, store) as client:
            await run(client, 24, provider)
        rejected = sum(h.status == 429 for h in fake.hits())
    finally:
        fake.stop()
    assert (rejected == 0) if respect else (rejected > 0)
