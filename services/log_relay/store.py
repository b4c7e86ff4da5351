"""The log archive in log-relay's own store: per run, an `ArchiveInfo` row and segments of
consecutive chunks, each a zlib-compressed JSON array of `StoredChunk`s (see the
migration for why segments). Written in one transaction, so a run is archived whole or
not at all; rewriting it is harmless (idempotent)."""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator
from datetime import datetime

import msgspec

from services.core.store import Store
from services.log_relay.topics import StoredChunk


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
                 info.archived_at.isoformat()),
            )

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


def encode_segment(encoded_chunks: list[bytes]) -> tuple[bytes, int]:
    """`(compressed payload, raw size)` of already JSON-encoded chunks."""
    raw = b"[" + b",".join(encoded_chunks) + b"]"
    return zlib.compress(raw, 6), len(raw)


def decode_segment(payload: bytes) -> list[StoredChunk]:
    return msgspec.json.decode(zlib.decompress(payload), type=list[StoredChunk])
