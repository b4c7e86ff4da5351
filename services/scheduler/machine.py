"""The run state machine as pure functions: each takes the current record and returns the
changed copy, or None when the event does not apply (stale attempt, terminal run, replay).

queued → preparing → running → committing → succeeded | failed | canceled, with
retrying (a timed wait) between attempts. Terminal states absorb everything.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from schemas.executions import ExecutionFinished, ExecutionStarted
from schemas.workspaces import WorkspaceCommitted, WorkspaceFailed, WorkspaceReady
from services.scheduler.store import RunRecord

replace = msgspec.structs.replace


def prepare(run: RunRecord, now: datetime) -> RunRecord | None:
    if run.state != "queued":
        return None
    return replace(run, state="preparing", started_at=run.started_at or now)


def workspace_ready(run: RunRecord, event: WorkspaceReady) -> RunRecord | None:
    if run.state != "preparing" or run.attempt != event.attempt:
        return None
    return replace(
        run, state="running", workspace_path=event.path, branch=event.branch,
        base_sha=event.base_sha, conflicts=list(event.conflicts), host=event.host or None,
    )


def agent_started(run: RunRecord, event: ExecutionStarted) -> RunRecord | None:
    """A timing fact, not a transition: a quick agent's finish may be handled first. The
    first start is the one measured; a redelivered attempt's start moves the due time."""
    if run.attempt != event.attempt:
        return None
    started = run.agent_started_at or event.started_at
    due = run.agent_due_at
    if event.timeout_seconds is not None and not run.terminal:
        limit = event.started_at + timedelta(seconds=event.timeout_seconds)
        due = limit if due is None else max(due, limit)
    if (started, due) == (run.agent_started_at, run.agent_due_at):
        return None
    return replace(run, agent_started_at=started, agent_due_at=due)


def overdue(run: RunRecord, now: datetime, grace: float) -> RunRecord | None:
    """Fail a running attempt whose result is `grace` seconds past the runner's own limit:
    the runner is frozen, gone with no other to take the command, or stuck. Not retried:
    a new attempt would queue behind the same trouble."""
    if run.state != "running" or run.agent_due_at is None:
        return None
    if now < run.agent_due_at + timedelta(seconds=grace):
        return None
    reason = (f"overdue: no result from the executor-runner {grace:g}s after the agent's"
              " time limit (runner frozen, lost or stuck)")
    return replace(run, state="failed", reason=reason, finished_at=now, retry_at=None)


def execution_finished(
    run: RunRecord, event: ExecutionFinished, now: datetime, max_attempts: int,
    backoff: list[float],
) -> RunRecord | None:
    if run.state != "running" or run.attempt != event.attempt:
        return None
    result = replace(
        run.result, summary=event.summary, session_id=event.session_id, usage=event.usage,
        cost_usd=event.cost_usd, exit_code=event.exit_code,
    )
    if event.outcome == "succeeded":
        return replace(run, state="committing", result=result)
    if event.outcome == "canceled":
        return replace(run, state="canceled", result=result, reason=event.reason,
                       finished_at=now)
    reason = event.reason or event.outcome
    return _fail_or_retry(replace(run, result=result), reason, event.retryable, now,
                          max_attempts, backoff, not_before=event.retry_after_seconds)


def workspace_committed(
    run: RunRecord, event: WorkspaceCommitted, now: datetime
) -> RunRecord | None:
    if run.state != "committing" or run.attempt != event.attempt:
        return None
    result = replace(
        run.result, commit_sha=event.commit_sha, base_sha=event.base_sha, branch=event.branch,
        files_changed=event.files_changed, diff=event.diff, diff_truncated=event.diff_truncated,
    )
    reason = None
    if event.rejected_paths:
        reason = "not committed (protected paths): " + ", ".join(event.rejected_paths)
    return replace(run, state="succeeded", result=result, finished_at=now, reason=reason)


def workspace_failed(
    run: RunRecord, event: WorkspaceFailed, now: datetime, max_attempts: int,
    backoff: list[float],
) -> RunRecord | None:
    if run.state not in ("preparing", "committing") or run.attempt != event.attempt:
        return None
    reason = f"workspace {event.stage} failed: {event.reason}"
    return _fail_or_retry(run, reason, event.retryable, now, max_attempts, backoff)


def cancel(run: RunRecord, reason: str, now: datetime) -> RunRecord | None:
    if run.terminal:
        return None
    return replace(run, state="canceled", reason=reason, finished_at=now, retry_at=None)


def dead_lettered(run: RunRecord, attempt: int | None, reason: str, now: datetime
                  ) -> RunRecord | None:
    if run.terminal or (attempt is not None and attempt != run.attempt):
        return None
    return replace(run, state="failed", reason=f"dead-lettered: {reason}", finished_at=now,
                   retry_at=None)


def retry_due(run: RunRecord) -> RunRecord | None:
    if run.state != "retrying":
        return None
    return replace(
        run, state="preparing", attempt=run.attempt + 1, retry_at=None, workspace_path=None,
        agent_started_at=None, agent_due_at=None, host=None,
    )


def no_runner(run: RunRecord, now: datetime, max_attempts: int, backoff: list[float]
              ) -> RunRecord | None:
    """The workspace is on a host where no runner serves the run's executor: try again
    (the next attempt's workspace may land on a host that has one)."""
    if run.state != "running" or run.agent_started_at is not None:
        return None
    reason = f"no executor-runner serves {run.executor} on host {run.host}"
    return _fail_or_retry(run, reason, True, now, max_attempts, backoff)


def unpin(run: RunRecord) -> RunRecord | None:
    """A pinned prepare its host has not taken: let any host make the workspace (the
    follow-up then starts from the branch zloth committed, without the agent's session)."""
    if run.state != "preparing" or run.pin_host is None:
        return None
    return replace(run, pin_host=None, resume_session=None)


def _fail_or_retry(
    run: RunRecord, reason: str, retryable: bool, now: datetime, max_attempts: int,
    backoff: list[float], not_before: float | None = None,
) -> RunRecord:
    if retryable and run.attempt < max_attempts:
        delay = backoff[min(run.attempt, len(backoff)) - 1] if backoff else 0.0
        delay = max(delay, not_before or 0.0)
        return replace(run, state="retrying", reason=reason,
                       retry_at=now + timedelta(seconds=delay))
    return replace(run, state="failed", reason=reason, finished_at=now, retry_at=None)
