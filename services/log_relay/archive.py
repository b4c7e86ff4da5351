"""Archive a run's log when its final chunk arrives, so history outlives ZLOTH_LOGS.

A durable consumer sees every chunk of `zloth.logs.>` but decodes only three fields of
each (`_ChunkHead`); on a final chunk it reads the run's chunks back from the stream
(seq 1 to the final chunk's seq), packs them into compressed segments, and writes them in
one transaction. Unfenced: the result depends only on the stream, so a redelivered or
concurrent archive of the same run writes the same rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import ClassVar

import msgspec

from schemas.base import Event
from schemas.streams import LOGS, ConsumerSpec
from services.core.bus import Bus, Consume, Delivery
from services.core.telemetry import get_logger
from services.log_relay.reader import read_range
from services.log_relay.store import ArchiveInfo, ArchiveStore, Segment, encode_segment
from services.log_relay.topics import StoredChunk, decode_chunk, log_subject

SEGMENT_RAW_BYTES = 256 << 10
# max_deliver=-1: a failed archive is retried (backoff up to 60 s) until it succeeds. Never
# dead-lettered: zloth.dlq.> is read as "a run's command died", and a log chunk is not one.
CONSUMER = ConsumerSpec(
    stream=LOGS.name, durable="log-relay-archive", filter_subject="zloth.logs.>",
    ack_wait_seconds=60.0, max_deliver=-1, max_ack_pending=256,
)


class ChunkHead(Event, frozen=True, kw_only=True):
    """The fields of a LogChunk the archiver looks at: decoding skips the lines."""

    subject_prefix: ClassVar[str] = "zloth.logs"

    run_id: str
    final: bool = False
    state: str | None = None


class _Packer:
    """Packs chunks into segments; past `max_bytes` only the final chunk is still kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.segments: list[Segment] = []
        self.first_seq = 0
        self.chunks = 0
        self.raw_bytes = 0
        self.truncated = False
        self._pending: list[bytes] = []
        self._pending_ids: list[int] = []
        self._pending_bytes = 0

    async def add(self, chunk: StoredChunk) -> None:
        encoded = msgspec.json.encode(chunk)
        if not chunk.final and self.raw_bytes + len(encoded) > self.max_bytes:
            self.truncated = True
            return
        self.first_seq = self.first_seq or chunk.id
        self.chunks += 1
        self.raw_bytes += len(encoded)
        self._pending.append(encoded)
        self._pending_ids.append(chunk.id)
        self._pending_bytes += len(encoded)
        if self._pending_bytes >= SEGMENT_RAW_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, ids = self._pending, self._pending_ids
        self._pending, self._pending_ids, self._pending_bytes = [], [], 0
        # Compression is CPU work (~ms per segment): keep it off the event loop.
        payload, raw = await asyncio.to_thread(encode_segment, pending)
        self.segments.append(Segment(first_seq=ids[0], last_seq=ids[-1], chunks=len(ids),
                                     raw_bytes=raw, payload=payload))


async def archive_run(
    bus: Bus, store: ArchiveStore, run_id: str, final_seq: int, state: str | None, *,
    max_bytes: int, now: Callable[[], datetime],
) -> ArchiveInfo:
    """Archive the chunks of `run_id` up to `final_seq`; a no-op if already done."""
    existing = await store.info(run_id)
    if existing is not None and existing.last_seq >= final_seq:
        return existing
    packer = _Packer(max_bytes)
    last = 0
    async with aclosing(read_range(bus, log_subject(run_id), 0, final_seq)) as messages:
        async for seq, data in messages:
            try:
                chunk = decode_chunk(seq, data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # not a chunk: the live stream skipped it too
            await packer.add(chunk)
            last = seq
    await packer.flush()
    info = ArchiveInfo(
        run_id=run_id, state=state, first_seq=packer.first_seq, last_seq=last,
        chunks=packer.chunks, raw_bytes=packer.raw_bytes,
        compressed_bytes=sum(len(s.payload) for s in packer.segments),
        truncated=packer.truncated, archived_at=now(),
    )
    await store.save(info, packer.segments)
    return info


class Archiver:
    def __init__(
        self, bus: Bus, store: ArchiveStore, max_bytes: int,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._bus = bus
        self._store = store
        self._max_bytes = max_bytes
        self._now = now
        self._log = get_logger(service="log-relay", component="archive")

    def registration(self) -> Consume[ChunkHead]:
        # fenced=False: a lease per chunk would be a store write per log message.
        return Consume(CONSUMER, ChunkHead, self.on_chunk, concurrency=32, fenced=False)

    async def on_chunk(self, head: ChunkHead, delivery: Delivery) -> None:
        if not head.final:
            return
        # The subject, not the payload, says whose log this is: it is what readers follow.
        run_id = delivery.subject.removeprefix(f"{ChunkHead.subject_prefix}.")
        info = await archive_run(self._bus, self._store, run_id, delivery.stream_seq,
                                 head.state, max_bytes=self._max_bytes, now=self._now)
        self._log.info("log_archived", run_id=run_id, chunks=info.chunks,
                       raw_bytes=info.raw_bytes, compressed_bytes=info.compressed_bytes,
                       truncated=info.truncated)
