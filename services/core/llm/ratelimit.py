"""Client-side rate limiting of one provider in THIS process: requests and tokens per
window, a concurrency cap, and pauses the provider asks for (Retry-After, spent budgets).

Requests: at most N starts in any window of W·(1+headroom) (a sliding log, exact), paced
by a token bucket of `burst` at N per stretched window so the budget is not spent in one
burst. A start is re-stamped when the request's headers are written to the socket
(`sent`), so connection set-up and a busy loop do not shift it out of the window it
lands in. Tokens: the same sliding log over estimated tokens, corrected by real usage.

Across replicas we chose NOT to coordinate through KV: that would put a NATS round trip
and a compare-and-set contention point in front of every LLM call. Each replica gets its
share of the provider's limit in its settings (limit / replicas), and every replica reads
the provider's own rate-limit headers, which count the whole organisation's usage: when
they say the budget is spent, it pauses until the reset they announce.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from services.core.llm.settings import ProviderSettings
from services.core.llm.wire import RateInfo


@dataclass
class Grant:
    """One admitted request: when it started (was sent), its token charge, its wait."""

    at: float
    tokens: int
    waited: float


@dataclass
class _Budget:
    """What the provider's last word still allows us to send (monotonic times).

    An answer says: `remaining` now, full again (`limit`) after `reset` seconds. Both
    providers document a token bucket, so the budget refills at (limit − remaining) /
    reset per second; without a limit it comes back all at once at the reset. What is in
    flight is deducted (it may already be counted: this errs low), and a new answer never
    raises the budget above what an earlier one of the same period left (answers overtake
    each other; an older one is more optimistic). Requests started afterwards spend it."""

    left: float = 0.0  # at time `at`
    at: float = 0.0
    rate: float = 0.0
    until: float = 0.0  # after this, no constraint until the next answer

    def current(self, now: float) -> float:
        return self.left + self.rate * (now - self.at)

    def narrow(self, remaining: float, committed: float, reset: float, limit: float | None,
               now: float) -> None:
        left = remaining - committed
        rate = (limit - remaining) / reset if limit and reset > 0 and limit > remaining else 0.0
        if self.until <= now or left < self.current(now):
            self.left, self.at, self.rate = left, now, rate
        self.until = max(self.until, now + reset)

    def blocks(self, need: float, now: float) -> float:
        if self.until <= now or (short := need - self.current(now)) <= 0:
            return 0.0
        return min(short / self.rate, self.until - now) if self.rate else self.until - now

    def spend(self, amount: float, now: float) -> None:
        if self.until > now:
            self.left -= amount


class Limiter:
    def __init__(
        self,
        settings: ProviderSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # Off: only the concurrency cap (the baseline the benchmark compares against).
        self._enabled = settings.rate_limiting
        self._rpm = settings.requests_per_window if self._enabled else 0
        self._tpm = settings.tokens_per_window if self._enabled else 0
        self._window = settings.window_seconds * (1.0 + settings.headroom)
        self._rate = self._rpm / self._window if self._rpm else 0.0
        self._burst = float(settings.burst or max(1, math.floor(self._rate)))
        self._respect_headers = settings.respect_rate_headers and self._enabled
        self._clock = clock
        self._sleep = sleep
        self._slots = asyncio.Semaphore(max(1, settings.max_concurrency))
        self._lock = asyncio.Lock()  # FIFO: waiters are admitted in arrival order
        self._starts: deque[Grant] = deque()
        self._charges: deque[Grant] = deque()
        self._level = self._burst
        self._level_at = clock()
        self._pause_until = 0.0
        self._live: list[Grant] = []  # in flight
        self._requests_left = _Budget()
        self._tokens_left = _Budget()

    @asynccontextmanager
    async def admit(self, tokens: int) -> AsyncIterator[Grant]:
        """Hold a concurrency slot and a rate budget for one request."""
        # The slot first: a request waiting for a slot after taking its rate budget
        # would start later than the limiter recorded, and break the window guarantee.
        async with self._slots:
            grant = await self._take(min(tokens, self._tpm) if self._tpm else tokens)
            self._live.append(grant)
            try:
                yield grant
            finally:
                self._live.remove(grant)

    @property
    def in_flight(self) -> int:
        return len(self._live)

    def sent(self, grant: Grant) -> None:
        """The request is leaving now: its window starts here, not at admission. (Only
        ever later, so the log stays a safe over-estimate even if no longer sorted.)"""
        grant.at = max(grant.at, self._clock())

    def settle(self, grant: Grant, tokens: int) -> None:
        """Replace the estimate with the tokens the provider counted."""
        grant.tokens = tokens

    def pause(self, seconds: float) -> None:
        """Nobody in this process sends to the provider for `seconds` (its Retry-After)."""
        if self._enabled:
            self._pause_until = max(self._pause_until, self._clock() + seconds)

    def observe(self, rate: RateInfo, grant: Grant) -> None:
        """Take the provider's remaining budget and reset (its rate-limit headers on the
        answer to `grant`) into account, so the request that would get a 429 waits."""
        if not self._respect_headers:
            return
        now = self._clock()
        others = [g for g in self._live if g is not grant]
        if rate.remaining_requests is not None and rate.requests_reset is not None:
            self._requests_left.narrow(rate.remaining_requests, len(others),
                                       rate.requests_reset, rate.limit_requests, now)
        if rate.remaining_tokens is not None and rate.tokens_reset is not None:
            self._tokens_left.narrow(rate.remaining_tokens, sum(g.tokens for g in others),
                                     rate.tokens_reset, rate.limit_tokens, now)

    async def _take(self, tokens: int) -> Grant:
        started = self._clock()
        async with self._lock:
            while (delay := self._delay(self._clock(), tokens)) > 0:
                # At least a microsecond: a delay of a few ulps would not move the clock.
                await self._sleep(max(delay, 1e-6))
            now = self._clock()
            grant = Grant(at=now, tokens=tokens, waited=now - started)
            self._requests_left.spend(1, now)
            self._tokens_left.spend(tokens, now)
            if self._rpm:
                self._starts.append(grant)
                self._level -= 1.0
            if self._tpm:
                self._charges.append(grant)
            return grant

    def _delay(self, now: float, tokens: int) -> float:
        delay = max(self._pause_until - now, self._requests_left.blocks(1, now),
                    self._tokens_left.blocks(tokens, now))
        horizon = now - self._window
        if self._rpm:
            while self._starts and self._starts[0].at <= horizon:
                self._starts.popleft()
            if len(self._starts) >= self._rpm:
                delay = max(delay, self._starts[0].at - horizon)
            self._level = min(self._burst, self._level + (now - self._level_at) * self._rate)
            self._level_at = now
            if self._level < 1.0:
                delay = max(delay, (1.0 - self._level) / self._rate)
        if self._tpm:
            while self._charges and self._charges[0].at <= horizon:
                self._charges.popleft()
            excess = sum(g.tokens for g in self._charges) + tokens - self._tpm
            for grant in self._charges:  # the oldest charges leave the window first
                if excess <= 0:
                    break
                excess -= grant.tokens
                delay = max(delay, grant.at - horizon)
        return delay
