"""`LLMClient.complete()`: the one way zloth calls an LLM provider. Order of a call:
output cache (and single flight) → per attempt: shared circuit breaker → this process's
rate limiter → one HTTP request → tenacity decides whether, and when, to try again."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_random_exponential

from schemas.streams import LLM_BREAKER_BUCKET, LLM_CACHE_BUCKET
from services.core import metrics
from services.core.bus import Bus
from services.core.llm.anthropic import Anthropic
from services.core.llm.breaker import Breaker
from services.core.llm.cache import KeyedLocks, OutputCache
from services.core.llm.errors import DeadlineExceeded, LLMError, ProviderFailed, ProviderRejected
from services.core.llm.google import Google
from services.core.llm.openai import OpenAI
from services.core.llm.ratelimit import Grant, Limiter
from services.core.llm.request import Request, Response, cache_key
from services.core.llm.secrets import Secret
from services.core.llm.settings import LLMSettings
from services.core.llm.transport import Transport
from services.core.llm.wire import Adapter, Completion, Refused, Transient
from services.core.telemetry import get_logger

# What says "the provider is down" (the breaker counts them); 429 and 4xx are answers.
_OUTAGES = frozenset({"server_error", "timeout", "connection", "stream_cut", "bad_response"})


class KeySource(Protocol):
    async def get(self, name: str) -> Secret | None: ...


@dataclass
class _Call:
    """One `complete()` as tenacity's callbacks see it."""

    request: Request
    adapter: Adapter
    budget_end: float  # monotonic: the earlier of the deadline and the retry budget
    key: str = field(default="", repr=False)  # the API key: never in a repr or traceback
    attempts: int = 0


class LLMClient:
    def __init__(
        self, settings: LLMSettings, bus: Bus, keys: KeySource, *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = settings
        self._bus = bus
        self._keys = keys
        owner = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self._breaker = Breaker(bus, settings, owner, clock=clock)
        self._cache = OutputCache(bus)
        self._transport = Transport()
        self._limiters: dict[str, Limiter] = {}
        self._adapters: dict[str, Adapter] = {"openai": OpenAI(), "anthropic": Anthropic(),
                                              "google": Google()}
        self._flights = KeyedLocks()
        self._key_cache: dict[str, tuple[float, str]] = {}
        self._log = get_logger(component="llm")

    async def start(self) -> None:
        await self._bus.ensure_bucket(LLM_CACHE_BUCKET)
        await self._bus.ensure_bucket(LLM_BREAKER_BUCKET)

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> LLMClient:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def limiter(self, provider: str) -> Limiter:
        if provider not in self._limiters:
            self._limiters[provider] = Limiter(self._s.provider(provider))
        return self._limiters[provider]

    async def complete(self, request: Request) -> Response:
        """The provider's answer (or the cache's). Raises an LLMError (errors.py), or
        ValueError for a request no provider could accept (nothing is sent)."""
        request.validate()
        deadline = request.deadline_seconds or self._s.deadline_seconds
        started = time.monotonic()
        call = _Call(request=request, adapter=self._adapters[request.provider],
                     budget_end=started + min(deadline, self._s.max_retry_seconds))
        outcome, cached, error = "failed", False, ""
        try:
            async with asyncio.timeout(deadline):
                response = await self._complete(call)
            outcome, cached = "ok", response.cached
            return response
        except TimeoutError:
            outcome, error = "deadline", f"no answer within {deadline}s"
            raise DeadlineExceeded(request.provider, "deadline", call.attempts, error,
                                   self._s.backoff_max) from None
        except LLMError as exc:
            outcome, error = type(exc).__name__.removeprefix("Provider").lower(), str(exc)
            raise
        finally:
            metrics.llm_calls_total.labels(request.provider,
                                           "cached" if cached else outcome).inc()
            # The canonical line of a call: one per complete(), never the prompt or key
            # (error texts from providers had the key taken out in transport.py).
            self._log.info("llm_call_finished", provider=request.provider, model=request.model,
                           outcome=outcome, cached=cached, attempts=call.attempts,
                           seconds=round(time.monotonic() - started, 3), error=error or None)

    async def _complete(self, call: _Call) -> Response:
        request = call.request
        if not (request.cache and self._s.cache_ttl_seconds > 0):
            return await self._call(call)
        key = cache_key(request)
        async with self._flights.hold(key):  # an identical request here goes first
            hit = await self._cache.get(key)
            if hit is not None:
                metrics.llm_cache_hits_total.labels(request.provider).inc()
                return hit
            metrics.llm_cache_misses_total.labels(request.provider).inc()
            response = await self._call(call)
            await self._cache.put(key, response, self._s.cache_ttl_seconds)
            return response

    async def _call(self, call: _Call) -> Response:
        request = call.request
        call.key = await self._api_key(request.provider)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Transient),
            wait=self._wait,
            stop=lambda state: self._stop(call, state),
            before_sleep=lambda state: self._on_retry(call, state),
            reraise=True,
        )
        try:
            completion: Completion = await retrying(self._attempt, call)
        except Transient as exc:
            # The provider's Retry-After stands as given; otherwise the next backoff step.
            delay = exc.retry_after if exc.retry_after is not None else min(
                self._s.backoff_max, self._s.backoff_base * 2 ** call.attempts)
            raise ProviderFailed(request.provider, exc.kind, call.attempts, exc.detail,
                                 delay) from None
        except Refused as exc:
            raise ProviderRejected(request.provider, exc.status, exc.detail) from None
        return Response(text=completion.text, usage=completion.usage, provider=request.provider,
                        model=request.model, attempts=call.attempts,
                        finish_reason=completion.finish_reason)

    async def _attempt(self, call: _Call) -> Completion:
        provider = call.request.provider
        permit = await self._breaker.admit(provider)  # ProviderUnavailable ends the call
        call.attempts += 1
        # Outcomes are recorded only when known: a cancelled attempt (deadline) says
        # nothing about the provider, and a probe's lease simply runs out.
        try:
            completion = await self._send(call)
        except Transient as exc:
            await self._breaker.record(provider, permit, failed=exc.kind in _OUTAGES)
            raise
        except Refused:
            await self._breaker.record(provider, permit, failed=False)
            raise
        await self._breaker.record(provider, permit, failed=False)
        return completion

    async def _send(self, call: _Call) -> Completion:
        provider = call.request.provider
        limiter = self.limiter(provider)
        async with limiter.admit(call.request.estimated_tokens()) as grant:
            metrics.llm_ratelimit_wait.labels(provider).observe(grant.waited)
            started = time.monotonic()
            try:
                exchange = await self._transport.send(
                    call.adapter, call.request, self._s.provider(provider), call.key,
                    on_sent=lambda: limiter.sent(grant))
            except Transient as exc:
                self._account(limiter, grant, exc, provider)
                raise
            except Refused:
                metrics.llm_requests_total.labels(provider, "rejected").inc()
                raise
            finally:
                metrics.llm_latency.labels(provider).observe(time.monotonic() - started)
            limiter.observe(exchange.rate, grant)
            usage = exchange.completion.usage
            limiter.settle(grant, usage.input + usage.output)
        metrics.llm_requests_total.labels(provider, "ok").inc()
        metrics.llm_tokens_total.labels(provider, "input").inc(usage.input)
        metrics.llm_tokens_total.labels(provider, "output").inc(usage.output)
        return exchange.completion

    def _account(self, limiter: Limiter, grant: Grant, exc: Transient, provider: str) -> None:
        metrics.llm_requests_total.labels(provider, exc.kind).inc()
        limiter.observe(exc.rate, grant)
        if exc.retry_after is not None:
            limiter.pause(exc.retry_after)  # every caller in this process waits, not just us

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, Transient) else None
        backoff = wait_random_exponential(multiplier=self._s.backoff_base,
                                          max=self._s.backoff_max)(state)
        if retry_after is not None:
            # Never before Retry-After; the jitter keeps replicas from returning in step.
            return retry_after + min(backoff, 0.1 * retry_after + 0.05)
        return float(backoff)

    def _stop(self, call: _Call, state: RetryCallState) -> bool:
        if state.attempt_number >= self._s.max_attempts:
            return True
        # Sleeping past the budget would only fail later: fail now, say when to come back.
        return time.monotonic() + state.upcoming_sleep >= call.budget_end

    def _on_retry(self, call: _Call, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = exc.kind if isinstance(exc, Transient) else "unknown"
        metrics.llm_retries_total.labels(call.request.provider, reason).inc()
        self._log.debug("llm_retry_scheduled", provider=call.request.provider, reason=reason,
                        attempt=state.attempt_number, delay=round(state.upcoming_sleep, 3))

    async def _api_key(self, provider: str) -> str:
        cached = self._key_cache.get(provider)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        name = self._s.provider(provider).key_name
        secret = await self._keys.get(name)
        if secret is None:
            raise ProviderRejected(provider, 0, f"no API key in the secret store under {name!r}")
        self._key_cache[provider] = (time.monotonic() + self._s.key_cache_seconds,
                                     secret.reveal())
        return secret.reveal()
