"""The output cache: a finished response under its request's hash in a KV bucket, each
value with its own TTL; and single flight, so identical requests in this process wait for
the first one instead of paying for the same answer twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec

from schemas.streams import LLM_CACHE_BUCKET
from services.core.bus import Bus
from services.core.errors import BusError
from services.core.llm.request import Response, Usage
from services.core.telemetry import get_logger


class _Stored(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    usage: Usage
    provider: str
    model: str
    finish_reason: str = ""


class OutputCache:
    """A cache that cannot be reached is a miss, never a failed call."""

    def __init__(self, bus: Bus, bucket: str = LLM_CACHE_BUCKET.name) -> None:
        self._bus = bus
        self._bucket = bucket
        self._log = get_logger(component="llm.cache")

    async def get(self, key: str) -> Response | None:
        try:
            entry = await self._bus.kv_get_entry(self._bucket, key)
        except BusError as exc:
            self._log.warning("llm_cache_unreadable", error=str(exc))
            return None
        if entry is None:
            return None
        try:
            stored = msgspec.json.decode(entry.value, type=_Stored)
        except msgspec.DecodeError:
            return None  # written by an incompatible version: treat as absent
        return Response(text=stored.text, usage=stored.usage, provider=stored.provider,
                        model=stored.model, finish_reason=stored.finish_reason, cached=True)

    async def put(self, key: str, response: Response, ttl_seconds: float) -> None:
        stored = _Stored(text=response.text, usage=response.usage, provider=response.provider,
                         model=response.model, finish_reason=response.finish_reason)
        try:
            await self._bus.kv_put_ttl(self._bucket, key, msgspec.json.encode(stored),
                                       ttl_seconds)
        except BusError as exc:
            self._log.warning("llm_cache_unwritable", error=str(exc))


class KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
