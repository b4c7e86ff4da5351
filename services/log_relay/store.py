"""The log archive in log-relay's own store: per run, an `ArchiveInfo` row and segments of
consecutive chunks, each a zlib-compressed JSON array of `StoredChunk`s (see the
migration for why segments). Written in one transaction, so a run is archived whole or
not at all; rewriting it is harmless (idempotent).

Retention removes archives oldest archived first, a batch per transaction, leaving an
`Expired` tombstone per run (see migration 0002); archiving a run again clears it.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec

from services.core.store import Queries, Row, Store
from services.log_relay.topics import StoredChunk

ExpiryReason = Literal["age", "budget"]


class ArchiveInfo(msgspec.Struct, kw_only=True):
    run_id: str
    state: str | None
    first_seq: int
    last_seq: int
    chunks: int
    raw_bytes: int
    compressed_bytes: int
    truncated: bool = False  # the run wrote more than archive_max_bytes: the middle is cut
    archived_at: datetime


class Expired(msgspec.Struct, kw_only=True):
    """What is left of a run whose archive retention removed."""

    run_id: str
    state: str | None
    last_seq: int
    compressed_bytes: int
    archived_at: datetime
    expired_at: datetime
    reason: ExpiryReason


class ArchiveTotals(msgspec.Struct, kw_only=True):
    archives: int
    bytes: int  # compressed


class Segment(msgspec.Struct, kw_only=True):
    first_seq: int
    last_seq: int
    chunks: int
    raw_bytes: int
    payload: bytes  # zlib(JSON array of StoredChunk)


class ArchiveStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def info(self, run_id: str) -> ArchiveInfo | None:
        row = await self._store.fetchone("SELECT * FROM log_archives WHERE run_id = ?", (run_id,))
        if row is None:
            return None
        row["truncated"] = bool(row["truncated"])
        return msgspec.convert(row, ArchiveInfo, strict=False)

    async def save(self, info: ArchiveInfo, segments: list[Segment]) -> None:
        async with self._store.transaction() as tx:
            await tx.execute("DELETE FROM log_archive_expired WHERE run_id = ?", (info.run_id,))
            await tx.execute("DELETE FROM log_archive_segments WHERE run_id = ?", (info.run_id,))
            for seg in segments:
                await tx.execute(
                    "INSERT INTO log_archive_segments"
                    " (run_id, first_seq, last_seq, chunks, raw_bytes, payload)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (info.run_id, seg.first_seq, seg.last_seq, seg.chunks, seg.raw_bytes,
                     seg.payload),
                )
            await tx.execute(
                "INSERT INTO log_archives (run_id, state, first_seq, last_seq, chunks,"
                " raw_bytes, compressed_bytes, truncated, archived_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id) DO UPDATE SET state = excluded.state,"
                " first_seq = excluded.first_seq, last_seq = excluded.last_seq,"
                " chunks = excluded.chunks, raw_bytes = excluded.raw_bytes,"
                " compressed_bytes = excluded.compressed_bytes,"
                " truncated = excluded.truncated, archived_at = excluded.archived_at",
                (info.run_id, info.state, info.first_seq, info.last_seq, info.chunks,
                 info.raw_bytes, info.compressed_bytes, int(info.truncated),
                 _timestamp(info.archived_at)),
            )

    async def expired(self, run_id: str) -> Expired | None:
        row = await self._store.fetchone(
            "SELECT * FROM log_archive_expired WHERE run_id = ?", (run_id,))
        return None if row is None else msgspec.convert(row, Expired, strict=False)

    async def totals(self) -> ArchiveTotals:
        row = await self._store.fetchone(
            "SELECT COUNT(*) AS archives, COALESCE(SUM(compressed_bytes), 0) AS bytes"
            " FROM log_archives")
        assert row is not None  # an aggregate always has a row
        return ArchiveTotals(archives=int(row["archives"]), bytes=int(row["bytes"]))

    async def expire_older(
        self, cutoff: datetime, now: datetime, limit: int
    ) -> list[Expired]:
        """Remove at most `limit` of the archives made before `cutoff`, oldest first."""
        async with self._store.transaction() as tx:
            rows = await tx.fetchall(
                f"{_OLDEST} WHERE archived_at < ? ORDER BY archived_at, run_id LIMIT ?",
                (_timestamp(cutoff), limit))
            return await _expire(tx, rows, now, "age")

    async def expire_oldest(self, free_bytes: int, now: datetime, limit: int) -> list[Expired]:
        """Remove the oldest archives (at most `limit`) until `free_bytes` are freed."""
        async with self._store.transaction() as tx:
            rows = await tx.fetchall(f"{_OLDEST} ORDER BY archived_at, run_id LIMIT ?",
                                     (limit,))
            chosen: list[Row] = []
            freed = 0
            for row in rows:
                if freed >= free_bytes:
                    break
                chosen.append(row)
                freed += int(row["compressed_bytes"])
            return await _expire(tx, chosen, now, "budget")

    async def forget_expired(self, cutoff: datetime, limit: int) -> int:
        """Drop at most `limit` tombstones of runs that expired before `cutoff`."""
        return await self._store.execute(
            "DELETE FROM log_archive_expired WHERE run_id IN (SELECT run_id"
            " FROM log_archive_expired WHERE expired_at < ? ORDER BY expired_at LIMIT ?)",
            (_timestamp(cutoff), limit))

    async def chunks(self, run_id: str, after: int) -> AsyncGenerator[StoredChunk, None]:
        """The archived chunks with id > `after`, in order, one segment in memory at a time."""
        cursor = after
        while True:
            row = await self._store.fetchone(
                "SELECT last_seq, payload FROM log_archive_segments"
                " WHERE run_id = ? AND last_seq > ? ORDER BY first_seq LIMIT 1",
                (run_id, cursor),
            )
            if row is None:
                return
            for chunk in decode_segment(row["payload"]):
                if chunk.id > after:
                    yield chunk
            cursor = int(row["last_seq"])


_OLDEST = "SELECT run_id, state, last_seq, compressed_bytes, archived_at FROM log_archives"


async def _expire(
    tx: Queries, rows: Sequence[Row], now: datetime, reason: ExpiryReason
) -> list[Expired]:
    if not rows:
        return []
    ids = [str(row["run_id"]) for row in rows]
    expired_at = _timestamp(now)
    within = f"WHERE run_id IN ({', '.join('?' * len(ids))})"
    await tx.execute(f"DELETE FROM log_archive_expired {within}", ids)  # noqa: S608  placeholders only
    await tx.execute(
        "INSERT INTO log_archive_expired (run_id, state, last_seq, compressed_bytes,"  # noqa: S608  placeholders only
        " archived_at, expired_at, reason) SELECT run_id, state, last_seq, compressed_bytes,"
        f" archived_at, ?, ? FROM log_archives {within}",
        [expired_at, reason, *ids])
    await tx.execute(f"DELETE FROM log_archive_segments {within}", ids)  # noqa: S608  placeholders only
    await tx.execute(f"DELETE FROM log_archives {within}", ids)  # noqa: S608  placeholders only
    return [msgspec.convert({**row, "expired_at": expired_at, "reason": reason}, Expired,
                            strict=False) for row in rows]


def _timestamp(moment: datetime) -> str:
    # Fixed width, UTC: the text order of stored timestamps is their time order (rows
    # written before as plain isoformat(), without microseconds, still sort right).
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def encode_segment(encoded_chunks: list[bytes]) -> tuple[bytes, int]:
    """`(compressed payload, raw size)` of already JSON-encoded chunks."""
    raw = b"[" + b",".join(encoded_chunks) + b"]"
    return zlib.compress(raw, 6), len(raw)


def decode_segment(payload: bytes) -> list[StoredChunk]:
    return msgspec.json.decode(zlib.decompress(payload), type=list[StoredChunk])
