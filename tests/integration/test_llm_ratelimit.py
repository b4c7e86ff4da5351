"""Client-side rate limiting against a fake provider that allows N requests per window
and answers 429 above it.

Scaled 30:1 from the issue: "N requests per minute" is N = 100 per 2 s window here, and
the client's burst is 2 (its default, a second's worth, is N/60 at a minute's scale). The
limiter and the server's count work the same at any window length; only the client's
5 % headroom shrinks with the window (100 ms here) while its send jitter does not, which
is why the window is not scaled further.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from services.core.bus import Bus
from services.core.llm import LLMClient, LLMError, Request, SecretStore
from tests.support.fake_llm import FakeLLM, FakeProcess, RateRule, fake_settings, secret_store

N = 100
WINDOW = 2.0



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


async def test_200_concurrent_calls_never_exceed_the_limit(bus: Bus, store: SecretStore) -> None:
    """200 calls at once, limiter set to the provider's N per window: no window at the
    server ever holds more than N arrivals, and not one 429 comes back. The provider runs
    in its own process, so the arrival times it records are not skewed by this one."""
    fake = await FakeProcess.start(limit=N, window=WINDOW)
    settings = fake_settings(fake, provider={
        "requests_per_window": N, "window_seconds": WINDOW, "burst": 2,
        "read_timeout": 10.0, "attempt_timeout": 10.0})  # load must not look like an outage
    try:
        async with LLMClient(settings, bus, store) as client:
            results = await run(client, 200)
    finally:
        hits = await fake.stop()
    failures = [str(r) for r in results if isinstance(r, LLMError)]
    assert not failures, failures[:3]
    assert [h for h in hits if h.status != 200] == []
    assert len(hits) == 200
    busiest = busiest_window([h.at for h in hits], WINDOW)
    assert busiest <= N, f"{busiest} arrivals within {WINDOW}s"


async def test_without_the_limiter_the_provider_is_overrun(
    bus: Bus, store: SecretStore, fake: FakeLLM
) -> None:
    """The control for the test above: the same burst with no limiter piles more than N
    requests into one window, and 429s come back."""
    settings = fake_settings(fake, max_attempts=1, provider={"rate_limiting": False})
    async with LLMClient(settings, bus, store) as client:
        await run(client, 2 * N)
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
