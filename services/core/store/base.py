"""The store interface every service's tables sit behind (SQLite now, PostgreSQL later).

SQL is written with `?` placeholders; a dialect that needs `$1` translates. Rows are dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

Row = dict[str, Any]
Params = Sequence[Any]


class Queries(Protocol):
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...


class Store(Queries, Protocol):
    dialect: str

    def transaction(self) -> AbstractAsyncContextManager[Queries]:
        """A serialisable write transaction; commits on exit, rolls back on error."""
        ...

    async def executescript(self, script: str) -> None: ...

    async def close(self) -> None: ...
