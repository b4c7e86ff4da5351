"""The run state machine: legal transitions, stale events ignored, retries bounded,
terminal states absorbing (a canceled run never flips to failed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from schemas.executions import ExecutionFinished, ExecutionStarted
from schemas.runs import RepoRef
from schemas.workspaces import WorkspaceCommitted, WorkspaceFailed, WorkspaceReady
from services.scheduler import machine
from services.scheduler.store import RunRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BACKOFF = [2.0, 10.0]


def record(**changes: object) -> RunRecord:
    run = RunRecord(id="run_1", task_id="t", message_id="m", executor="demo-a",
                    repo=RepoRef(repo_id="r", url="/r"), base_ref=None, instruction="do",
                    accepted_at=T0, queued_at=T0, updated_at=T0)
    return machine.replace(run, **changes)


def ready(attempt: int = 1) -> WorkspaceReady:
    return WorkspaceReady(run_id="run_1", attempt=attempt, path="/w", branch="zloth/run_1",
                          base_sha="a" * 40, base_ref="main")


def finished(outcome: str, attempt: int = 1, retryable: bool = False) -> ExecutionFinished:
    return ExecutionFinished(run_id="run_1", attempt=attempt, executor="demo-a",
                             outcome=outcome, reason="why", summary="did it",  # type: ignore[arg-type]
                             finished_at=T0, retryable=retryable)


def test_the_happy_path() -> None:
    run = machine.prepare(record(), T0)
    assert run is not None and run.state == "preparing" and run.started_at == T0
    run = machine.workspace_ready(run, ready())
    assert run is not None and run.state == "running" and run.workspace_path == "/w"
    started = ExecutionStarted(run_id="run_1", attempt=1, executor="demo-a", runner_id="x",
                               pid=1, started_at=T0)
    run = machine.agent_started(run, started) or run
    assert run.agent_started_at == T0
    run = machine.execution_finished(run, finished("succeeded"), T0, 3, BACKOFF)
    assert run is not None and run.state == "committing" and run.result.summary == "did it"
    committed = WorkspaceCommitted(run_id="run_1", attempt=1, branch="zloth/run_1",
                                   base_sha="a" * 40, commit_sha="b" * 40)
    run = machine.workspace_committed(run, committed, T0)
    assert run is not None and run.state == "succeeded" and run.result.commit_sha == "b" * 40


def test_stale_and_replayed_events_do_not_apply() -> None:
    running = record(state="running", attempt=2, workspace_path="/w", base_sha="a" * 40)
    assert machine.workspace_ready(running, ready(2)) is None  # replay: already running
    assert machine.execution_finished(running, finished("failed", attempt=1), T0, 3,
                                      BACKOFF) is None
    assert machine.prepare(running, T0) is None


def test_cancel_is_terminal_and_absorbs_later_failures() -> None:
    run = machine.cancel(record(state="running"), "user asked", T0)
    assert run is not None and run.state == "canceled"
    assert machine.execution_finished(run, finished("failed"), T0, 3, BACKOFF) is None
    assert machine.cancel(run, "again", T0) is None
    assert machine.dead_lettered(run, None, "dlq", T0) is None


def test_retryable_failures_retry_with_backoff_until_the_cap() -> None:
    run = record(state="running")
    retrying = machine.execution_finished(run, finished("failed", retryable=True), T0, 2,
                                          BACKOFF)
    assert retrying is not None and retrying.state == "retrying"
    assert retrying.retry_at == T0 + timedelta(seconds=2)
    again = machine.retry_due(retrying)
    assert again is not None and again.state == "preparing" and again.attempt == 2
    last = machine.execution_finished(machine.replace(again, state="running"),
                                      finished("failed", attempt=2, retryable=True), T0, 2,
                                      BACKOFF)
    assert last is not None and last.state == "failed"


def test_agent_failure_is_not_retried_and_keeps_the_reason() -> None:
    failed = machine.execution_finished(record(state="running"), finished("failed"), T0, 3,
                                        BACKOFF)
    assert failed is not None and failed.state == "failed" and failed.reason == "why"


def test_workspace_failure_and_dead_letters_fail_the_current_attempt_only() -> None:
    preparing = record(state="preparing")
    event = WorkspaceFailed(run_id="run_1", attempt=1, stage="prepare", reason="no such ref")
    failed = machine.workspace_failed(preparing, event, T0, 3, BACKOFF)
    assert failed is not None and failed.state == "failed"
    assert "no such ref" in (failed.reason or "")
    assert machine.dead_lettered(preparing, 2, "x", T0) is None
    dead = machine.dead_lettered(preparing, 1, "max deliveries", T0)
    assert dead is not None and dead.state == "failed"


def test_conflicts_left_by_a_follow_up_merge_go_to_the_agent_first() -> None:
    from services.scheduler.handlers import step_command

    event = msgspec_replace_ready(conflicts=["src/app.py", "README.md"])
    run = machine.workspace_ready(record(state="preparing"), event)
    assert run is not None and run.conflicts == ["src/app.py", "README.md"]
    command = step_command(run, "zloth")
    assert command is not None
    text = command.instruction  # type: ignore[attr-defined]
    assert "- src/app.py" in text and "- README.md" in text and text.endswith("do")
    plain = step_command(machine.workspace_ready(record(state="preparing"), ready()) or run,
                         "zloth")
    assert plain is not None and plain.instruction == "do"  # type: ignore[attr-defined]


def msgspec_replace_ready(**changes: object) -> WorkspaceReady:
    return machine.replace(ready(), **changes)


def started(at: datetime, timeout: float | None, delivery: int = 1) -> ExecutionStarted:
    return ExecutionStarted(run_id="run_1", attempt=1, executor="demo-a", runner_id="x",
                            pid=1, started_at=at, delivery=delivery, timeout_seconds=timeout)


def test_an_attempt_is_overdue_only_grace_seconds_past_the_runners_limit() -> None:
    running = record(state="running", workspace_path="/w", base_sha="a" * 40)
    run = machine.agent_started(running, started(T0, 60))
    assert run is not None and run.agent_due_at == T0 + timedelta(seconds=60)
    assert machine.overdue(run, T0 + timedelta(seconds=60 + 29), grace=30) is None
    late = machine.overdue(run, T0 + timedelta(seconds=60 + 30), grace=30)
    assert late is not None and late.state == "failed" and late.retry_at is None
    assert late.reason is not None and late.reason.startswith("overdue")
    assert machine.overdue(late, T0 + timedelta(days=1), grace=30) is None  # terminal


def test_a_redelivered_start_moves_the_due_time_but_not_the_measured_start() -> None:
    running = record(state="running", workspace_path="/w", base_sha="a" * 40)
    first = machine.agent_started(running, started(T0, 60))
    assert first is not None
    again = machine.agent_started(first, started(T0 + timedelta(seconds=50), 60, delivery=2))
    assert again is not None and again.agent_started_at == T0
    assert again.agent_due_at == T0 + timedelta(seconds=110)
    assert machine.overdue(again, T0 + timedelta(seconds=100), grace=0) is None
    assert machine.agent_started(again, started(T0, 60)) is None  # a replay changes nothing


def test_no_limit_known_means_never_overdue_and_a_retry_forgets_the_due_time() -> None:
    running = record(state="running", workspace_path="/w", base_sha="a" * 40)
    run = machine.agent_started(running, started(T0, None))
    assert run is not None and run.agent_due_at is None
    assert machine.overdue(run, T0 + timedelta(days=30), grace=0) is None
    due = machine.replace(run, state="retrying", agent_due_at=T0)
    retried = machine.retry_due(due)
    assert retried is not None and retried.agent_due_at is None


def test_a_start_handled_after_a_quick_finish_is_still_recorded() -> None:
    """The start event can come after the run ended (a quick agent): the timing counts."""
    done = record(state="succeeded", finished_at=T0)
    late = machine.agent_started(done, started(T0, 60))
    assert late is not None and late.agent_started_at == T0
    assert late.state == "succeeded" and late.agent_due_at is None


def test_a_retryable_failure_waits_at_least_as_long_as_the_runner_asked() -> None:
    running = record(state="running", workspace_path="/w", base_sha="a" * 40)
    event = msgspec.structs.replace(finished("failed", retryable=True), retry_after_seconds=30)
    run = machine.execution_finished(running, event, T0, 3, BACKOFF)
    assert run is not None and run.state == "retrying"
    assert run.retry_at == T0 + timedelta(seconds=30)  # not the 2 s backoff
    soon = machine.execution_finished(running, finished("failed", retryable=True), T0, 3,
                                      BACKOFF)
    assert soon is not None and soon.retry_at == T0 + timedelta(seconds=2)
