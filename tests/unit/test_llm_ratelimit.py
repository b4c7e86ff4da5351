"""The client's limiter on a virtual clock: the window guarantee, token budgets, pauses
for Retry-After, and the budget the provider's rate-limit headers announce."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from services.core.llm.ratelimit import Grant, Limiter
from services.core.llm.settings import ProviderSettings
from services.core.llm.wire import RateInfo


class VirtualClock:
    """Time moves only when the limiter sleeps (it sleeps one waiter at a time)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def limiter(clock: VirtualClock, **fields: Any) -> Limiter:
    values: dict[str, Any] = {"base_url": "http://x", "key_name": "k", "headroom": 0.0}
    values.update(fields)
    return Limiter(ProviderSettings(**values), clock=clock, sleep=clock.sleep)


def busiest(times: list[float], window: float) -> int:
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


async def starts(lim: Limiter, clock: VirtualClock, count: int, tokens: int = 1) -> list[float]:
    found: list[float] = []

    async def one() -> None:
        async with lim.admit(tokens):
            found.append(clock())

    await asyncio.gather(*(one() for _ in range(count)))
    return found


async def test_never_more_than_n_in_any_window() -> None:
    """A burst of 5 at once, then 10 per 60 s, and never 11 in any 60 s."""
    clock = VirtualClock()
    times = await starts(limiter(clock, requests_per_window=10, burst=5), clock, 45)
    assert busiest(times, 60.0) == 10
    assert times.count(0.0) == 5
    assert 200.0 <= max(times) <= 250.0  # ~10 per minute: not much slower either


async def test_headroom_stretches_the_window() -> None:
    clock = VirtualClock()
    times = await starts(limiter(clock, requests_per_window=10, headroom=0.1), clock, 30)
    assert busiest(times, 66.0) == 10


async def test_token_budget_counts_real_usage() -> None:
    """Two estimates of 400 against 1,000 tokens a window: a third must wait for the
    window, unless the first two are settled at their real 100 each."""
    for settle, expected in ((False, 60.0), (True, 0.0)):
        clock = VirtualClock()
        lim = limiter(clock, tokens_per_window=1000)
        for _ in range(2):
            async with lim.admit(400) as grant:
                if settle:
                    lim.settle(grant, 100)
        assert await starts(lim, clock, 1, 400) == [expected]


async def test_a_token_estimate_larger_than_the_window_waits_for_an_empty_window() -> None:
    clock = VirtualClock()
    lim = limiter(clock, tokens_per_window=1000)
    times = await starts(lim, clock, 3, tokens=5000)
    assert times == [0.0, 60.0, 120.0]


async def test_retry_after_pauses_every_caller() -> None:
    clock = VirtualClock()
    lim = limiter(clock)
    lim.pause(7.5)
    assert await starts(lim, clock, 3) == [7.5, 7.5, 7.5]


async def test_the_concurrency_cap_holds() -> None:
    lim = limiter(VirtualClock(), max_concurrency=3)
    peak = 0

    async def one() -> None:
        nonlocal peak
        async with lim.admit(1):
            peak = max(peak, lim.in_flight)
            await asyncio.sleep(0.001)

    await asyncio.gather(*(one() for _ in range(20)))
    assert peak == 3


async def test_headers_saying_the_budget_is_spent_hold_new_requests() -> None:
    """Remaining 2 while two other requests are in flight: nothing more may start until
    the reset; a later, staler answer (remaining 5) does not reopen the budget."""
    clock = VirtualClock()
    lim = limiter(clock)
    async with AsyncExitStack() as stack:
        grants: list[Grant] = [await stack.enter_async_context(lim.admit(1)) for _ in range(3)]
        lim.observe(RateInfo(remaining_requests=2, requests_reset=4.0), grants[0])
        lim.observe(RateInfo(remaining_requests=5, requests_reset=4.0), grants[1])
    assert await starts(lim, clock, 1) == [4.0]


async def test_headers_leave_room_for_what_remains() -> None:
    clock = VirtualClock()
    lim = limiter(clock)
    async with lim.admit(1) as grant:
        lim.observe(RateInfo(remaining_requests=2, requests_reset=9.0), grant)
    assert await starts(lim, clock, 3) == [0.0, 0.0, 9.0]


async def test_headers_are_ignored_when_told_to() -> None:
    clock = VirtualClock()
    lim = limiter(clock, respect_rate_headers=False)
    async with lim.admit(1) as grant:
        lim.observe(RateInfo(remaining_requests=0, requests_reset=9.0), grant)
    assert await starts(lim, clock, 2) == [0.0, 0.0]


async def test_a_known_limit_refills_the_budget_gradually() -> None:
    """Limit 10, none left, full in 5 s: a token bucket refilling 2 per second, so the
    next requests go every half second instead of all waiting the whole 5 s."""
    clock = VirtualClock()
    lim = limiter(clock)
    async with lim.admit(1) as grant:
        lim.observe(RateInfo(remaining_requests=0, requests_reset=5.0, limit_requests=10),
                    grant)
    assert await starts(lim, clock, 3) == [0.5, 1.0, 1.5]


async def test_the_window_starts_when_the_request_leaves() -> None:
    """Admitted at 0 but sent at 4 (a slow connect, a busy loop): the next request of a
    1-per-10 s limit may leave at 14, not 10, or the provider would see two in 10 s."""
    clock = VirtualClock()
    lim = limiter(clock, requests_per_window=1, window_seconds=10.0)
    async with lim.admit(1) as grant:
        clock.now = 4.0
        lim.sent(grant)
    assert await starts(lim, clock, 1) == [14.0]
