"""Fencing tokens of the job protocol, kept in the consuming service's own store.

A delivery `(stream_seq, num_delivered)` claims its message only if no newer delivery
has; the bus re-checks ownership before it acks, so a stale attempt never acks.
"""

from __future__ import annotations

import time

from services.core.store.base import Store


class Leases:
    def __init__(self, store: Store, holder: str) -> None:
        self._store = store
        self._holder = holder

    async def claim(self, consumer: str, stream_seq: int, delivered: int) -> bool:
        changed = await self._store.execute(
            "INSERT INTO zloth_leases (consumer, stream_seq, delivered, holder, renewed_at)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (consumer, stream_seq) DO UPDATE SET"
            " delivered = excluded.delivered, holder = excluded.holder,"
            " renewed_at = excluded.renewed_at"
            " WHERE zloth_leases.delivered < excluded.delivered",
            (consumer, stream_seq, delivered, self._holder, time.time()),
        )
        return changed == 1

    async def owns(self, consumer: str, stream_seq: int, delivered: int) -> bool:
        row = await self._store.fetchone(
            "SELECT delivered FROM zloth_leases WHERE consumer = ? AND stream_seq = ?",
            (consumer, stream_seq),
        )
        return row is not None and int(row["delivered"]) == delivered

    async def renew(self, consumer: str, stream_seq: int, delivered: int) -> bool:
        changed = await self._store.execute(
            "UPDATE zloth_leases SET renewed_at = ?"
            " WHERE consumer = ? AND stream_seq = ? AND delivered = ?",
            (time.time(), consumer, stream_seq, delivered),
        )
        return changed == 1

    async def release(self, consumer: str, stream_seq: int, delivered: int) -> None:
        await self._store.execute(
            "DELETE FROM zloth_leases WHERE consumer = ? AND stream_seq = ? AND delivered = ?",
            (consumer, stream_seq, delivered),
        )
