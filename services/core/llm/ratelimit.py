"""Client-side rate limiting of one provider in THIS process: requests and tokens per
window, a concurrency cap, and pauses the provider asks for (Retry-After, spent budgets).

Requests: at most N starts in any window of W·(1+headroom) (a sliding log, exact), paced
by a token bucket of `burst` at N per stretched window so the budget is not spent in one
burst. Tokens: the same sliding log over estimated tokens, corrected by the real usage.

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
    """One admitted request: its order, when it started, its token charge, its wait."""

    seq: int
    at: float
    tokens: int
    waited: float


class Limiter:
    def __init__(
        self,
        settings: ProviderSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rpm = settings.requests_per_window
        self._tpm = settings.tokens_per_window
        self._window = settings.window_seconds * (1.0 + settings.headroom)
        self._rate = self._rpm / self._window if self._rpm else 0.0
        self._burst = float(settings.burst or max(1, math.floor(self._rate)))
        self._respect_headers = settings.respect_rate_headers
        self._clock = clock
        self._sleep = sleep
        self._slots = asyncio.Semaphore(max(1, settings.max_concurrency))
        self._lock = asyncio.Lock()  # FIFO: waiters are admitted in arrival order
        self._starts: deque[float] = deque()
        self._charges: deque[Grant] = deque()
        self._level = self._burst
        self._level_at = clock()
        self._pause_until = 0.0
        self._seq = 0
        self._live: dict[int, Grant] = {}  # in flight, by seq
        self._newest_seen = -1

    @asynccontextmanager
    async def admit(self, tokens: int) -> AsyncIterator[Grant]:
        """Hold a concurrency slot and a rate budget for one request."""
        # The slot first: a request waiting for a slot after taking its rate budget
        # would start later than the limiter recorded, and break the window guarantee.
        async with self._slots:
            grant = await self._take(min(tokens, self._tpm) if self._tpm else tokens)
            self._live[grant.seq] = grant
            try:
                yield grant
            finally:
                del self._live[grant.seq]

    @property
    def in_flight(self) -> int:
        return len(self._live)

    def settle(self, grant: Grant, tokens: int) -> None:
        """Replace the estimate with the tokens the provider counted."""
        grant.tokens = tokens

    def pause(self, seconds: float) -> None:
        """Nobody in this process sends to the provider for `seconds` (its Retry-After)."""
        self._pause_until = max(self._pause_until, self._clock() + seconds)

    def observe(self, rate: RateInfo, grant: Grant) -> None:
        """Pause until the provider's reset when the budget left after `grant` does not
        exceed what was sent after it (those requests count against it as they arrive).

        Answers can overtake each other: a view older than one already seen is ignored,
        on the assumption that the provider counts requests in the order they started."""
        if not self._respect_headers or grant.seq < self._newest_seen:
            return
        self._newest_seen = grant.seq
        later = [g for seq, g in self._live.items() if seq > grant.seq]
        requests, tokens = rate.remaining_requests, rate.remaining_tokens
        if requests is not None and rate.requests_reset is not None and requests <= len(later):
            self.pause(rate.requests_reset)
        if tokens is not None and rate.tokens_reset is not None and tokens <= sum(
            g.tokens for g in later
        ):
            self.pause(rate.tokens_reset)

    async def _take(self, tokens: int) -> Grant:
        started = self._clock()
        async with self._lock:
            while (delay := self._delay(self._clock(), tokens)) > 0:
                await self._sleep(delay)
            now = self._clock()
            grant = Grant(seq=self._seq, at=now, tokens=tokens, waited=now - started)
            self._seq += 1
            if self._rpm:
                self._starts.append(now)
                self._level -= 1.0
            if self._tpm:
                self._charges.append(grant)
            return grant

    def _delay(self, now: float, tokens: int) -> float:
        delay = self._pause_until - now
        horizon = now - self._window
        if self._rpm:
            while self._starts and self._starts[0] <= horizon:
                self._starts.popleft()
            if len(self._starts) >= self._rpm:
                delay = max(delay, self._starts[0] - horizon)
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
