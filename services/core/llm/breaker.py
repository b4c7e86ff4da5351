"""A circuit breaker per provider whose state every replica shares: one KV key per
provider, changed only by compare-and-set on its revision, so concurrent replicas never
overwrite each other's failures.

closed ─(N consecutive failures within the window)→ open ─(open_seconds pass)→ half_open:
one replica wins the probe (a lease in the value); its success closes the breaker, its
failure reopens it; a prober that dies lets its lease run out and another one probes.
Failures are what says "the provider is down": 5xx, timeouts, connection errors and cut
streams; a 429 or 4xx is an answer, so it counts as a success. Times are wall-clock
(shared across hosts). When NATS itself fails, the breaker lets calls through (fails open).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec

from schemas.streams import LLM_BREAKER_BUCKET
from services.core import metrics
from services.core.bus import Bus, KvEntry
from services.core.errors import BusError
from services.core.llm.errors import ProviderUnavailable
from services.core.llm.settings import LLMSettings
from services.core.telemetry import get_logger

State = Literal["closed", "open", "half_open"]
_GAUGE = {"closed": 0, "half_open": 1, "open": 2}
_CAS_TRIES = 16


class BreakerState(msgspec.Struct, frozen=True, kw_only=True):
    state: State = "closed"
    failures: tuple[float, ...] = ()  # consecutive failures, newest last
    open_until: float = 0.0
    probe_owner: str = ""
    probe_until: float = 0.0


@dataclass(frozen=True)
class Pass:
    """Permission for one attempt; a probe carries the lease it won."""

    probe: str = ""


class Breaker:
    def __init__(
        self,
        bus: Bus,
        settings: LLMSettings,
        owner: str,
        *,
        clock: Callable[[], float] = time.time,
        bucket: str = LLM_BREAKER_BUCKET.name,
    ) -> None:
        self._bus = bus
        self._s = settings
        self._owner = owner
        self._clock = clock
        self._bucket = bucket
        self._open_until: dict[str, float] = {}  # what we last saw, to fail fast locally
        self._log = get_logger(component="llm.breaker")

    async def admit(self, provider: str) -> Pass:
        """Pass, or raise ProviderUnavailable without sending anything."""
        now = self._clock()
        if self._open_until.get(provider, 0.0) > now:
            raise ProviderUnavailable(provider, self._open_until[provider] - now)
        try:
            for _ in range(_CAS_TRIES):
                entry, state = await self._read(provider)
                now = self._clock()
                if state.state == "closed":
                    return Pass()
                if state.state == "open" and now < state.open_until:
                    self._open_until[provider] = state.open_until
                    raise ProviderUnavailable(provider, state.open_until - now)
                if state.state == "half_open" and now < state.probe_until:
                    wait = min(state.probe_until - now, self._s.breaker_open_seconds)
                    raise ProviderUnavailable(provider, wait)
                lease = f"{self._owner}:{uuid.uuid4().hex[:8]}"
                until = now + self._probe_seconds(provider)
                probe = BreakerState(state="half_open", failures=state.failures,
                                     probe_owner=lease, probe_until=until)
                if await self._write(provider, entry, probe):
                    self._log.info("llm_breaker_probing", provider=provider)
                    return Pass(probe=lease)
        except BusError as exc:
            self._log.warning("llm_breaker_unreadable", provider=provider, error=str(exc))
        return Pass()

    async def record(self, provider: str, permit: Pass, *, failed: bool) -> None:
        try:
            for _ in range(_CAS_TRIES):
                entry, state = await self._read(provider)
                new = self._next(state, permit, failed, self._clock())
                if new is None or await self._write(provider, entry, new):
                    if new is not None and new.state != state.state:
                        self._log.warning("llm_breaker_changed", provider=provider,
                                          state=new.state, was=state.state)
                    return
        except BusError as exc:
            self._log.warning("llm_breaker_unwritable", provider=provider, error=str(exc))

    def _next(self, state: BreakerState, permit: Pass, failed: bool, now: float
              ) -> BreakerState | None:
        """The state after one outcome; None when nothing changes (no write)."""
        mine = bool(permit.probe) and state.state == "half_open" \
            and state.probe_owner == permit.probe
        if permit.probe and not mine:
            return None  # our lease ran out and someone else probes now
        if mine and not failed:
            return BreakerState()
        if mine or (failed and state.state == "closed" and self._trips(state, now)):
            return BreakerState(state="open", open_until=now + self._s.breaker_open_seconds)
        if state.state != "closed":
            return None  # a late outcome of a call admitted before it opened
        if failed:
            recent = tuple(t for t in state.failures if t > now - self._s.breaker_window_seconds)
            return BreakerState(failures=(*recent, now))
        return BreakerState() if state.failures else None

    def _trips(self, state: BreakerState, now: float) -> bool:
        recent = [t for t in state.failures if t > now - self._s.breaker_window_seconds]
        return len(recent) + 1 >= self._s.breaker_failures

    def _probe_seconds(self, provider: str) -> float:
        # The lease must outlast the probe's request, or a second replica would probe too.
        return self._s.breaker_probe_seconds or self._s.provider(provider).attempt_timeout

    async def _read(self, provider: str) -> tuple[KvEntry | None, BreakerState]:
        entry = await self._bus.kv_get_entry(self._bucket, provider)
        state = BreakerState()
        if entry is not None:
            try:
                state = msgspec.json.decode(entry.value, type=BreakerState)
            except msgspec.DecodeError:
                # Another version's format: start closed; the next write replaces it.
                self._log.warning("llm_breaker_state_unreadable", provider=provider)
        metrics.llm_breaker_state.labels(provider).set(_GAUGE[state.state])
        if state.state == "closed":
            self._open_until.pop(provider, None)
        return entry, state

    async def _write(self, provider: str, entry: KvEntry | None, state: BreakerState) -> bool:
        data = msgspec.json.encode(state)
        if entry is None:
            written = await self._bus.kv_create(self._bucket, provider, data)
        else:
            written = await self._bus.kv_update(self._bucket, provider, data, entry.revision)
        if written is not None:
            metrics.llm_breaker_state.labels(provider).set(_GAUGE[state.state])
        return written is not None

