"""SQLite store: WAL, synchronous=FULL, one writer connection behind a lock plus a reader.

Several processes may open the same file (busy_timeout); write transactions use
BEGIN IMMEDIATE so two writers never deadlock on a lock upgrade.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from services.core.errors import StoreError
from services.core.store.base import Params, Queries, Row

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)


class _Conn:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            cursor = await self._conn.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise StoreError(f"{exc} in: {sql.strip()[:200]}") from exc
        changed = cursor.rowcount
        await cursor.close()
        return changed

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._conn.execute(sql, tuple(params)) as cursor:
            row = await cursor.fetchone()
        return dict(row) if row is not None else None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._conn.execute(sql, tuple(params)) as cursor:
            rows = await cursor.fetchall()
        return [dict(row) for row in rows]


class SqliteStore:
    dialect = "sqlite"

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = _Conn(writer)
        self._reader = _Conn(reader)
        self._raw_writer = writer
        self._raw_reader = reader
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, synchronous: str = "FULL") -> SqliteStore:
        """`synchronous="NORMAL"` (WAL: durable when a process dies, not when the machine
        does) is for state that dies with the machine anyway, such as fencing leases."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path, synchronous)
        reader = await _connect(path, synchronous)
        return cls(writer, reader)

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        return await self._reader.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._reader.fetchall(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Queries]:
        async with self._lock:
            # aiosqlite runs each statement in its thread even when the awaiting task is
            # cancelled: a transaction whose owner was cancelled may still be open here.
            if self._raw_writer.in_transaction:
                await _shielded(self._raw_writer.rollback())
            try:
                await _shielded(self._raw_writer.execute("BEGIN IMMEDIATE"))
                yield self._writer
            except BaseException:
                if self._raw_writer.in_transaction:
                    await _shielded(self._raw_writer.rollback())
                raise
            await _shielded(self._raw_writer.commit())

    async def executescript(self, script: str) -> None:
        async with self._lock:
            await self._raw_writer.executescript(script)

    async def close(self) -> None:
        await self._raw_reader.close()
        await self._raw_writer.close()


async def _shielded(step: Awaitable[object]) -> None:
    """Finish a transaction step even if our task is cancelled meanwhile, so the
    connection's state is known when the lock is released."""
    task = asyncio.ensure_future(step)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def _connect(path: Path, synchronous: str) -> aiosqlite.Connection:
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for pragma in (*_PRAGMAS, f"PRAGMA synchronous={synchronous}"):
        await conn.execute(pragma)
    return conn
