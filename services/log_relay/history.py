"""Paged history of a run's log: `after` an id, at most `limit` chunks (and about
`max_bytes` of lines). Served from the archive once the run is archived whole, else from
the stream; `complete` says the page reaches the run's final chunk. A run whose archive
retention removed and whose chunks the stream no longer holds raises `LogExpired`."""

from __future__ import annotations

from contextlib import aclosing
from typing import Literal

import msgspec

from schemas.streams import LOGS
from services.core.bus import Bus
from services.log_relay.reader import read_range
from services.log_relay.store import ArchiveInfo, ArchiveStore, Expired
from services.log_relay.topics import StoredChunk, decode_chunk, log_subject


class HistoryPage(msgspec.Struct, kw_only=True):
    run_id: str
    chunks: list[StoredChunk]
    next_after: int  # pass as `after` for the next page (or as Last-Event-ID to stream)
    complete: bool
    source: Literal["stream", "archive"]
    archive: ArchiveInfo | None = None


class LogExpired(Exception):
    def __init__(self, expired: Expired) -> None:
        super().__init__(f"the log of run {expired.run_id} has expired")
        self.expired = expired


async def expired_log(bus: Bus, archive: ArchiveStore, run_id: str) -> Expired | None:
    """The tombstone of `run_id` if its log is gone: archive removed, stream dropped it."""
    expired = await archive.expired(run_id)
    if expired is None or await bus.last_message(LOGS.name, log_subject(run_id)) is not None:
        return None
    return expired


class _Page:
    def __init__(self, limit: int, max_bytes: int) -> None:
        self.chunks: list[StoredChunk] = []
        self._limit = limit
        self._max_bytes = max_bytes
        self._bytes = 0

    def add(self, chunk: StoredChunk) -> bool:
        """Add `chunk`; False once the page is full (the first chunk always fits)."""
        self.chunks.append(chunk)
        self._bytes += len(chunk.lines)
        return len(self.chunks) < self._limit and self._bytes < self._max_bytes


async def history(
    bus: Bus, archive: ArchiveStore, run_id: str, after: int, limit: int, max_bytes: int
) -> HistoryPage:
    info = await archive.info(run_id)
    page = _Page(limit, max_bytes)
    whole = info is not None and not info.truncated
    newest = None if whole else await bus.last_message(LOGS.name, log_subject(run_id))
    if info is not None and newest is None:
        async with aclosing(archive.chunks(run_id, after)) as archived:
            async for chunk in archived:
                if not page.add(chunk):
                    break
        next_after = page.chunks[-1].id if page.chunks else after
        return HistoryPage(run_id=run_id, chunks=page.chunks, next_after=next_after,
                           complete=next_after >= info.last_seq, source="archive",
                           archive=info)
    if info is None and newest is None and (expired := await archive.expired(run_id)):
        raise LogExpired(expired)
    final_seq: int | None = None
    next_after = after  # the last id read, skipped (malformed) messages included
    if newest is not None:
        final_seq = newest[0] if _is_final(*newest) else None
        async with aclosing(read_range(bus, log_subject(run_id), after, newest[0])) as past:
            async for seq, data in past:
                next_after = seq
                decoded = _decode(seq, data)
                if decoded is not None and not page.add(decoded):
                    break
    complete = final_seq is not None and next_after >= final_seq
    return HistoryPage(run_id=run_id, chunks=page.chunks, next_after=next_after,
                       complete=complete, source="stream", archive=info)


def _decode(seq: int, data: bytes) -> StoredChunk | None:
    try:
        return decode_chunk(seq, data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _is_final(seq: int, data: bytes) -> bool:
    chunk = _decode(seq, data)
    return chunk is not None and chunk.final
