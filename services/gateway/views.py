"""HTTP response bodies; the store returns these, the OpenAPI document describes them."""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas.runs import FileChange


class Repo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    url: str
    default_branch: str | None
    created_at: datetime


class RepoList(msgspec.Struct, frozen=True, kw_only=True):
    repos: list[Repo]


class Task(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    repo_id: str
    title: str | None
    created_at: datetime


class TaskList(msgspec.Struct, frozen=True, kw_only=True):
    tasks: list[Task]
    next_before: str | None  # pass as `?before=` for the next (older) page


class Message(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    task_id: str
    instruction: str
    executors: list[str]
    base_ref: str | None
    timeout_seconds: float | None
    created_at: datetime


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """The newest state of a run the gateway has seen (the read model)."""

    id: str
    task_id: str
    message_id: str | None
    executor: str
    state: str
    attempt: int
    version: int
    reason: str | None
    previous_run_id: str | None
    accepted_at: datetime | None
    queued_at: datetime | None
    started_at: datetime | None
    agent_started_at: datetime | None
    finished_at: datetime | None
    summary: str | None
    session_id: str | None
    branch: str | None
    base_sha: str | None
    commit_sha: str | None
    files_changed: list[FileChange]
    diff: str | None
    diff_truncated: bool
    exit_code: int | None
    usage: dict[str, int]
    cost_usd: float | None


class TaskDetail(msgspec.Struct, frozen=True, kw_only=True):
    """A task with its conversation; runs carry no `diff` here (GET the run for it)."""

    id: str
    repo_id: str
    title: str | None
    created_at: datetime
    messages: list[Message]
    runs: list[Run]


class AcceptedRuns(msgspec.Struct, frozen=True, kw_only=True):
    message: Message
    runs: list[Run]


class CancelAccepted(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    state: str  # the state when the cancel was requested; `canceled` follows as an event
    cancel_requested: bool = True


class ExecutorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a runner announces in the `zloth_executors` bucket (extra fields pass through)."""

    name: str
    concurrency: int


class ExecutorList(msgspec.Struct, frozen=True, kw_only=True):
    executors: list[ExecutorInfo]


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str
    request_id: str | None
    field: str | None = None


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    error: ErrorDetail
