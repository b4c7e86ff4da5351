"""Execution commands (scheduler → executor-runner, one subject per executor kind) and
the runner's events."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from schemas.base import Command, Event
from schemas.hosts import ANY_HOST

ExecutionOutcome = Literal["succeeded", "failed", "canceled", "timed_out"]


class ExecuteRun(Command, frozen=True, kw_only=True):
    subject_prefix: ClassVar[str] = "zloth.cmd.exec"

    run_id: str
    task_id: str
    attempt: int
    executor: str
    workspace_path: str
    base_sha: str
    instruction: str
    resume_session: str | None = None
    timeout_seconds: float | None = None
    host: str = ""  # the workspace's host: only runners there can run the agent in it

    def subject(self) -> str:
        # One subject per run under the executor's and host's: the reconciler can ask the
        # stream whether this run's command is still queued or in flight.
        return f"{self.subject_prefix}.{self.executor}.{self.host or ANY_HOST}.{self.run_id}"

    def msg_id(self) -> str:
        return f"run:{self.run_id}:attempt:{self.attempt}:exec"


class ExecutionStarted(Event, frozen=True, kw_only=True):
    subject_prefix: ClassVar[str] = "zloth.evt.exec.started"

    run_id: str
    attempt: int
    executor: str
    runner_id: str
    pid: int
    started_at: datetime
    delivery: int = 1
    # the wall-clock limit the runner enforces on this agent: the scheduler fails the run
    # as overdue when no result comes well past it (a frozen runner host)
    timeout_seconds: float | None = None

    def msg_id(self) -> str:
        return f"run:{self.run_id}:attempt:{self.attempt}:exec-started:{self.delivery}"


class ExecutionFinished(Event, frozen=True, kw_only=True):
    subject_prefix: ClassVar[str] = "zloth.evt.exec.finished"

    run_id: str
    attempt: int
    executor: str
    outcome: ExecutionOutcome
    exit_code: int | None = None
    reason: str | None = None
    summary: str | None = None
    session_id: str | None = None
    usage: dict[str, int] = {}
    cost_usd: float | None = None
    finished_at: datetime
    retryable: bool = False
    retry_after_seconds: float | None = None  # with retryable: not sooner than this

    def msg_id(self) -> str:
        return f"run:{self.run_id}:attempt:{self.attempt}:exec-finished"


class CancelRequested(Event, frozen=True, kw_only=True):
    """Broadcast to every runner: whoever runs this run's agent kills its process group."""

    subject_prefix: ClassVar[str] = "zloth.evt.exec.cancel"

    run_id: str
    reason: str = "canceled by user"

    def msg_id(self) -> str:
        return f"run:{self.run_id}:cancel-requested"
