"""The scheduler's own table of runs: one JSON document per run plus searchable columns;
every change is a read-modify-write in one transaction and bumps `version`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec

from schemas.runs import TERMINAL_STATES, RepoRef, RunResult, RunState
from services.core.store import Queries, Store


class RunRecord(msgspec.Struct, kw_only=True):
    id: str
    task_id: str
    message_id: str
    executor: str
    repo: RepoRef
    base_ref: str | None
    instruction: str
    resume_session: str | None = None
    previous_run_id: str | None = None
    timeout_seconds: float | None = None
    state: RunState = "queued"
    version: int = 1
    attempt: int = 1
    accepted_at: datetime
    queued_at: datetime
    started_at: datetime | None = None
    agent_started_at: datetime | None = None
    agent_due_at: datetime | None = None  # agent start + the runner's wall-clock limit
    finished_at: datetime | None = None
    updated_at: datetime
    retry_at: datetime | None = None
    reason: str | None = None
    workspace_path: str | None = None
    host: str | None = None  # where this attempt's workspace is (its commands go there)
    # a follow-up's prepare goes to its previous run's host (workspace, agent session)
    pin_host: str | None = None
    branch: str | None = None
    base_sha: str | None = None
    conflicts: list[str] = []  # a follow-up's merge left these for the agent to resolve
    result: RunResult = msgspec.field(default_factory=RunResult)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


Change = Callable[[RunRecord], RunRecord | None]


class RunStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def insert_if_absent(self, record: RunRecord) -> tuple[RunRecord, bool]:
        async with self._store.transaction() as tx:
            existing = await _load(tx, record.id)
            if existing is not None:
                return existing, False
            await tx.execute(
                "INSERT INTO runs (id, task_id, state, version, attempt, updated_at, retry_at, doc)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                _row(record),
            )
        return record, True

    async def get(self, run_id: str) -> RunRecord | None:
        return await _load(self._store, run_id)

    async def update(self, run_id: str, change: Change, now: datetime) -> RunRecord | None:
        """Apply `change` atomically; None (and nothing written) when it declines."""
        async with self._store.transaction() as tx:
            current = await _load(tx, run_id)
            if current is None:
                return None
            changed = change(current)
            if changed is None:
                return None
            changed.version = current.version + 1
            changed.updated_at = now
            values = _row(changed)
            await tx.execute(
                "UPDATE runs SET task_id = ?, state = ?, version = ?, attempt = ?,"
                " updated_at = ?, retry_at = ?, doc = ? WHERE id = ?",
                (*values[1:], run_id),
            )
            return changed

    async def due_retries(self, now: datetime) -> list[str]:
        rows = await self._store.fetchall(
            "SELECT id FROM runs WHERE state = 'retrying' AND retry_at <= ?", (now.timestamp(),)
        )
        return [str(row["id"]) for row in rows]

    async def stalled(self, older_than: datetime, limit: int = 500) -> list[RunRecord]:
        rows = await self._store.fetchall(
            "SELECT doc FROM runs WHERE state IN ('queued', 'preparing', 'running', 'committing')"
            " AND updated_at < ? ORDER BY updated_at LIMIT ?",
            (older_than.timestamp(), limit),
        )
        return [msgspec.json.decode(row["doc"], type=RunRecord) for row in rows]

    async def remember_cancel(self, run_id: str, reason: str, now: datetime) -> None:
        await self._store.execute(
            "INSERT INTO pending_cancels (run_id, reason, requested_at) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (run_id, reason, now.timestamp()),
        )

    async def pending_cancel(self, run_id: str) -> str | None:
        row = await self._store.fetchone(
            "SELECT reason FROM pending_cancels WHERE run_id = ?", (run_id,)
        )
        return None if row is None else str(row["reason"])

    async def count_by_state(self) -> dict[str, int]:
        rows = await self._store.fetchall("SELECT state, COUNT(*) AS n FROM runs GROUP BY state")
        return {str(row["state"]): int(row["n"]) for row in rows}


async def _load(queries: Queries, run_id: str) -> RunRecord | None:
    row = await queries.fetchone("SELECT doc FROM runs WHERE id = ?", (run_id,))
    return None if row is None else msgspec.json.decode(row["doc"], type=RunRecord)


def _row(record: RunRecord) -> tuple[object, ...]:
    return (
        record.id,
        record.task_id,
        record.state,
        record.version,
        record.attempt,
        record.updated_at.timestamp(),
        record.retry_at.timestamp() if record.retry_at else None,
        msgspec.json.encode(record),
    )
