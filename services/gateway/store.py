"""The gateway's tables behind typed methods: repos, tasks, messages, and runs (the read model
kept from RunStateChanged events, which is also the outbox of accepted StartRuns)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from schemas.runs import FileChange, RunStateChanged, StartRun
from services.core.store import Queries, Row, Store
from services.gateway.idempotency import KeyRecord, write_record
from services.gateway.views import Message, Repo, Run, Task, TaskDetail, TaskList

# Every column of a Run view but `diff`, which can be large: lists leave it out.
_RUN_COLUMNS = (
    "id, task_id, message_id, executor, state, attempt, version, reason, previous_run_id,"
    " accepted_at, queued_at, started_at, agent_started_at, finished_at, summary, session_id,"
    " branch, base_sha, commit_sha, files_changed, diff_truncated, exit_code, usage, cost_usd"
)
# What a RunStateChanged snapshot sets (the newest version wins).
_EVENT_COLUMNS = (
    "state", "version", "attempt", "reason", "queued_at", "started_at", "agent_started_at",
    "finished_at", "summary", "session_id", "branch", "base_sha", "commit_sha", "files_changed",
    "diff", "diff_truncated", "exit_code", "usage", "cost_usd",
)
_FILES = msgspec.json.Decoder(list[FileChange])
_USAGE = msgspec.json.Decoder(dict[str, int])
_NAMES = msgspec.json.Decoder(list[str])


class NewRun(msgspec.Struct, frozen=True, kw_only=True):
    """A run being accepted: its view, and the StartRun the outbox must deliver."""

    run: Run
    command: bytes
    correlation_id: str | None

    @classmethod
    def of(cls, command: StartRun, correlation_id: str | None) -> NewRun:
        view = Run(
            id=command.run_id, task_id=command.task_id, message_id=command.message_id,
            executor=command.executor, state="queued", attempt=0, version=0, reason=None,
            previous_run_id=command.previous_run_id, accepted_at=command.accepted_at,
            queued_at=None, started_at=None, agent_started_at=None, finished_at=None,
            summary=None, session_id=None, branch=None, base_sha=None, commit_sha=None,
            files_changed=[], diff=None, diff_truncated=False, exit_code=None, usage={},
            cost_usd=None,
        )
        return cls(run=view, command=msgspec.json.encode(command), correlation_id=correlation_id)


class OutboxItem(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    command: bytes
    correlation_id: str | None
    dispatch_after: float
    dispatch_count: int
    dispatched: bool  # published at least once (the scheduler may have it)


class _Undo(Exception):
    """Rolls a transaction back from inside (a conditional delete that did not fully apply)."""


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


class GatewayStore:
    def __init__(self, db: Store) -> None:
        self.db = db

    # -- repos and tasks ----------------------------------------------------------------

    async def add_repo(self, repo: Repo, record: KeyRecord | None) -> bool:
        """Insert `repo` unless its url is known; False when it was (nothing written)."""
        async with self.db.transaction() as tx:
            added = await tx.execute(
                "INSERT INTO repos (id, url, default_branch, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (url) DO NOTHING",
                (repo.id, repo.url, repo.default_branch, iso(repo.created_at)),
            )
            if added and record is not None:
                await write_record(tx, record)
        return added == 1

    async def repo(self, repo_id: str) -> Repo | None:
        row = await self.db.fetchone("SELECT * FROM repos WHERE id = ?", (repo_id,))
        return _repo(row) if row else None

    async def repo_by_url(self, url: str) -> Repo | None:
        row = await self.db.fetchone("SELECT * FROM repos WHERE url = ?", (url,))
        return _repo(row) if row else None

    async def repos(self) -> list[Repo]:
        return [_repo(r) for r in await self.db.fetchall("SELECT * FROM repos ORDER BY seq")]

    async def add_task(self, task: Task, record: KeyRecord | None) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO tasks (id, repo_id, title, created_at) VALUES (?, ?, ?, ?)",
                (task.id, task.repo_id, task.title, iso(task.created_at)),
            )
            if record is not None:
                await write_record(tx, record)

    async def task(self, task_id: str) -> Task | None:
        row = await self.db.fetchone("SELECT * FROM tasks WHERE id = ?", (task_id,))
        return _task(row) if row else None

    async def tasks(self, limit: int, before: str | None = None) -> TaskList | None:
        """Newest first; `before` is the id of the last task of the previous page (None
        returned when it is unknown)."""
        bound = 1 << 62
        if before is not None:
            row = await self.db.fetchone("SELECT seq FROM tasks WHERE id = ?", (before,))
            if row is None:
                return None
            bound = int(row["seq"])
        rows = await self.db.fetchall(
            "SELECT * FROM tasks WHERE seq < ? ORDER BY seq DESC LIMIT ?", (bound, limit + 1)
        )
        page = [_task(r) for r in rows[:limit]]
        more = len(rows) > limit
        return TaskList(tasks=page, next_before=page[-1].id if more and page else None)

    async def task_detail(self, task_id: str) -> TaskDetail | None:
        task = await self.task(task_id)
        if task is None:
            return None
        messages = await self.db.fetchall(
            "SELECT * FROM messages WHERE task_id = ? ORDER BY seq", (task_id,)
        )
        runs = await self.db.fetchall(
            f"SELECT {_RUN_COLUMNS}, NULL AS diff FROM runs WHERE task_id = ? ORDER BY seq",  # noqa: S608  constant column list
            (task_id,),
        )
        return TaskDetail(
            id=task.id, repo_id=task.repo_id, title=task.title, created_at=task.created_at,
            messages=[_message(m) for m in messages], runs=[_run(r) for r in runs],
        )

    # -- accepting runs (the outbox) ----------------------------------------------------

    async def latest_runs(self, task_id: str, executors: Sequence[str]) -> dict[str, Run]:
        """The newest run of each of `executors` in the task (what a follow-up continues)."""
        marks = ", ".join("?" for _ in executors)
        rows = await self.db.fetchall(
            f"SELECT {_RUN_COLUMNS}, NULL AS diff FROM runs WHERE seq IN ("  # noqa: S608  placeholders only
            f" SELECT MAX(seq) FROM runs WHERE task_id = ? AND executor IN ({marks})"
            " GROUP BY executor)",
            (task_id, *executors),
        )
        return {str(r["executor"]): _run(r) for r in rows}

    async def accept(
        self, message: Message, runs: Sequence[NewRun], dispatch_after: float,
        record: KeyRecord | None,
    ) -> None:
        """Write the message, its runs and their StartRuns (and the idempotent answer) in
        one transaction: after it, the outbox owes the scheduler every one of them."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO messages (id, task_id, instruction, executors, base_ref,"
                " timeout_seconds, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message.id, message.task_id, message.instruction,
                 msgspec.json.encode(message.executors).decode(), message.base_ref,
                 message.timeout_seconds, iso(message.created_at)),
            )
            for item in runs:
                await _insert_run(tx, item, dispatch_after)
            if record is not None:
                await write_record(tx, record)

    async def discard(
        self, message_id: str, count: int, dispatch_after: float, record: KeyRecord | None
    ) -> bool:
        """Undo `accept` when no StartRun left: only if the reconciler has not claimed any
        of the runs meanwhile (then the accept stands and it finishes the dispatch)."""
        try:
            async with self.db.transaction() as tx:
                deleted = await tx.execute(
                    "DELETE FROM runs WHERE message_id = ? AND dispatch_count = 0"
                    " AND dispatch_after = ?",
                    (message_id, dispatch_after),
                )
                if deleted != count:
                    raise _Undo
                await tx.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                if record is not None:
                    await tx.execute(
                        "DELETE FROM idempotency_keys WHERE key = ? AND owner = ?",
                        (record.key, record.owner),
                    )
        except _Undo:
            return False
        return True

    async def outbox_due(self, now: float, limit: int = 200) -> list[OutboxItem]:
        """Runs the scheduler has not answered (version 0) whose next publish is due."""
        rows = await self.db.fetchall(
            "SELECT id, command, correlation_id, dispatch_after, dispatch_count, dispatched_at"
            " FROM runs"
            " WHERE version = 0 AND state = 'queued' AND command IS NOT NULL"
            " AND dispatch_after <= ? ORDER BY dispatch_after LIMIT ?",
            (now, limit),
        )
        return [
            OutboxItem(
                run_id=r["id"], command=bytes(r["command"]), correlation_id=r["correlation_id"],
                dispatch_after=float(r["dispatch_after"]), dispatch_count=int(r["dispatch_count"]),
                dispatched=r["dispatched_at"] is not None,
            )
            for r in rows
        ]

    async def claim_dispatch(self, item: OutboxItem, until: float) -> bool:
        """Compare-and-set on `dispatch_after`: one publisher per run at a time (another
        replica's reconciler, or the request still deciding whether to discard)."""
        changed = await self.db.execute(
            "UPDATE runs SET dispatch_after = ? WHERE id = ? AND dispatch_after = ?",
            (until, item.run_id, item.dispatch_after),
        )
        return changed == 1

    async def release_dispatch(self, run_id: str, claimed_until: float, retry_at: float) -> None:
        await self.db.execute(
            "UPDATE runs SET dispatch_after = ? WHERE id = ? AND dispatch_after = ?",
            (retry_at, run_id, claimed_until),
        )

    async def mark_dispatched(
        self, published: Sequence[tuple[str, int]], at: float, redispatch_after: float
    ) -> None:
        """Record publishes of `(run_id, earlier publishes)`; should the scheduler stay
        silent, the next publish waits twice as long each time, up to an hour."""
        async with self.db.transaction() as tx:
            for run_id, earlier in published:
                delay = min(3600.0, redispatch_after * (1 << min(earlier, 8)))
                await tx.execute(
                    "UPDATE runs SET dispatched_at = ?, dispatch_count = dispatch_count + 1,"
                    " dispatch_after = ? WHERE id = ?",
                    (at, at + delay, run_id),
                )

    async def runs_by_state(self) -> dict[str, int]:
        rows = await self.db.fetchall("SELECT state, COUNT(*) AS n FROM runs GROUP BY state")
        return {str(row["state"]): int(row["n"]) for row in rows}

    async def outbox_backlog(self) -> int:
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM runs WHERE version = 0 AND state = 'queued'"
            " AND command IS NOT NULL AND dispatched_at IS NULL"
        )
        return int(row["n"]) if row else 0

    # -- the read model -----------------------------------------------------------------

    async def run(self, run_id: str, *, with_diff: bool = True) -> Run | None:
        diff = "diff" if with_diff else "NULL AS diff"
        row = await self.db.fetchone(
            f"SELECT {_RUN_COLUMNS}, {diff} FROM runs WHERE id = ?", (run_id,)  # noqa: S608  constant columns
        )
        return _run(row) if row else None

    async def apply_run_event(self, event: RunStateChanged, now: datetime) -> bool:
        """Keep the newest snapshot: applied only if `event.version` is newer than the
        stored one. A run the gateway never accepted is inserted from the event."""
        values = _event_values(event)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _EVENT_COLUMNS)
        columns = ("id", "task_id", "executor", "accepted_at", "dispatched_at", *_EVENT_COLUMNS)
        changed = await self.db.execute(
            f"INSERT INTO runs ({', '.join(columns)})"  # noqa: S608  constant column names
            f" VALUES ({', '.join('?' for _ in columns)})"
            f" ON CONFLICT (id) DO UPDATE SET {updates} WHERE runs.version < excluded.version",
            (event.run_id, event.task_id, event.executor, iso(event.queued_at or event.at),
             now.timestamp(), *values),
        )
        return changed == 1

    async def counts(self) -> dict[str, int]:
        """Rows per table (health output, and what tests check a bad request left alone)."""
        counts: dict[str, int] = {}
        for table in ("repos", "tasks", "messages", "runs", "idempotency_keys"):
            row = await self.db.fetchone(f"SELECT COUNT(*) AS n FROM {table}")  # noqa: S608  fixed names
            counts[table] = int(row["n"]) if row else 0
        return counts


async def _insert_run(tx: Queries, item: NewRun, dispatch_after: float) -> None:
    run = item.run
    await tx.execute(
        "INSERT INTO runs (id, task_id, message_id, executor, previous_run_id, command,"
        " correlation_id, accepted_at, dispatch_after, state, version, attempt)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0)",
        (run.id, run.task_id, run.message_id, run.executor, run.previous_run_id, item.command,
         item.correlation_id, iso(run.accepted_at), dispatch_after, run.state),
    )


def _event_values(event: RunStateChanged) -> tuple[Any, ...]:
    result = event.result
    files = msgspec.json.encode(result.files_changed if result else []).decode()
    usage = msgspec.json.encode(result.usage if result else {}).decode()
    return (
        event.state, event.version, event.attempt, event.reason, iso(event.queued_at),
        iso(event.started_at), iso(event.agent_started_at), iso(event.finished_at),
        result.summary if result else None, result.session_id if result else None,
        result.branch if result else None, result.base_sha if result else None,
        result.commit_sha if result else None, files, result.diff if result else None,
        int(result.diff_truncated) if result else 0, result.exit_code if result else None,
        usage, result.cost_usd if result else None,
    )


def _repo(row: Row) -> Repo:
    return Repo(
        id=row["id"], url=row["url"], default_branch=row["default_branch"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def _task(row: Row) -> Task:
    return Task(
        id=row["id"], repo_id=row["repo_id"], title=row["title"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def _message(row: Row) -> Message:
    return Message(
        id=row["id"], task_id=row["task_id"], instruction=row["instruction"],
        executors=_NAMES.decode(row["executors"]), base_ref=row["base_ref"],
        timeout_seconds=row["timeout_seconds"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def _run(row: Row) -> Run:
    return Run(
        id=row["id"], task_id=row["task_id"], message_id=row["message_id"],
        executor=row["executor"], state=row["state"], attempt=int(row["attempt"]),
        version=int(row["version"]), reason=row["reason"],
        previous_run_id=row["previous_run_id"], accepted_at=_dt(row["accepted_at"]),
        queued_at=_dt(row["queued_at"]), started_at=_dt(row["started_at"]),
        agent_started_at=_dt(row["agent_started_at"]), finished_at=_dt(row["finished_at"]),
        summary=row["summary"], session_id=row["session_id"], branch=row["branch"],
        base_sha=row["base_sha"], commit_sha=row["commit_sha"],
        files_changed=_FILES.decode(row["files_changed"]), diff=row["diff"],
        diff_truncated=bool(row["diff_truncated"]), exit_code=row["exit_code"],
        usage=_USAGE.decode(row["usage"]), cost_usd=row["cost_usd"],
    )
