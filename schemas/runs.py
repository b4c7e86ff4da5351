"""Run requests (gateway → scheduler) and run state events (scheduler → everyone).

Run lifecycle: queued → preparing → running → committing → succeeded | failed | canceled,
with retrying between attempts.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

import msgspec

from schemas.base import Command, Event

RunState = Literal[
    "queued", "preparing", "running", "committing", "retrying", "succeeded", "failed", "canceled"
]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class RepoRef(msgspec.Struct, frozen=True, kw_only=True):
    repo_id: str
    url: str  # a git URL or an absolute local path
    default_branch: str | None = None


class StartRun(Command, frozen=True, kw_only=True):
    """Ask the scheduler to drive one run (one executor on one instruction)."""

    subject_prefix: ClassVar[str] = "zloth.cmd.sched.start"

    run_id: str
    task_id: str
    message_id: str
    repo: RepoRef
    base_ref: str | None = None  # None: the repository's default branch
    instruction: str
    executor: str
    resume_session: str | None = None
    previous_run_id: str | None = None
    accepted_at: datetime
    timeout_seconds: float | None = None

    def subject(self) -> str:
        return f"{self.subject_prefix}.{self.run_id}"

    def msg_id(self) -> str:
        return f"run:{self.run_id}:start"


class CancelRun(Command, frozen=True, kw_only=True):
    subject_prefix: ClassVar[str] = "zloth.cmd.sched.cancel"

    run_id: str
    reason: str = "canceled by user"
    requested_at: datetime

    def subject(self) -> str:
        return f"{self.subject_prefix}.{self.run_id}"

    def msg_id(self) -> str:
        return f"run:{self.run_id}:cancel"


class FileChange(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    added: int
    removed: int
    status: str = "M"  # git name-status letter


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    summary: str | None = None
    session_id: str | None = None
    commit_sha: str | None = None
    base_sha: str | None = None
    branch: str | None = None
    files_changed: list[FileChange] = []
    diff: str | None = None
    diff_truncated: bool = False
    exit_code: int | None = None
    usage: dict[str, int] = {}
    cost_usd: float | None = None


class RunStateChanged(Event, frozen=True, kw_only=True):
    """A full snapshot of the run after a transition; `version` grows with every
    transition so consumers can keep the newest whatever order they see them in."""

    subject_prefix: ClassVar[str] = "zloth.evt.run"

    run_id: str
    task_id: str
    executor: str
    state: RunState
    version: int
    attempt: int
    at: datetime
    reason: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    agent_started_at: datetime | None = None
    finished_at: datetime | None = None
    result: RunResult | None = None

    def subject(self) -> str:
        # zloth.evt.run.<state>.<task_id>.<run_id>: one filter follows a task or a run.
        return f"{self.subject_prefix}.{self.state}.{self.task_id}.{self.run_id}"

    def msg_id(self) -> str:
        return f"run:{self.run_id}:v{self.version}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES
