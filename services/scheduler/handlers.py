"""Scheduler handlers: apply the state machine, then (re)publish what the new state asks
for. Publishing the current state's snapshot and step command again on a redelivery is
harmless (deterministic `Nats-Msg-Id`s), and is how a crash between write and publish heals.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from schemas.base import Command, Message, utcnow
from schemas.executions import (
    CancelRequested,
    ExecuteRun,
    ExecutionFinished,
    ExecutionStarted,
)
from schemas.logs import LogChunk
from schemas.runs import CancelRun, RunStateChanged, StartRun
from schemas.streams import CANCEL_BUCKET, CMD, exec_durable
from schemas.workspaces import (
    CommitWorkspace,
    PrepareWorkspace,
    WorkspaceCommitted,
    WorkspaceFailed,
    WorkspaceReady,
)
from services.core import metrics
from services.core.bus import Bus, Delivery
from services.core.telemetry import get_logger
from services.scheduler import machine
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import Change, RunRecord, RunStore

Clock = Callable[[], datetime]


class DeadLetteredCommand(Message, frozen=True, kw_only=True):
    """The fields every run command carries, read from a dead letter's payload."""

    run_id: str | None = None
    attempt: int | None = None


class Scheduler:
    def __init__(
        self, runs: RunStore, bus: Bus, settings: SchedulerSettings, clock: Clock = utcnow
    ) -> None:
        self.runs = runs
        self.bus = bus
        self.settings = settings
        self.clock = clock
        self.log = get_logger(service="scheduler")

    # -- commands -----------------------------------------------------------------------

    async def on_start_run(self, cmd: StartRun, delivery: Delivery) -> None:
        now = self.clock()
        previous = await self.runs.get(cmd.previous_run_id) if cmd.previous_run_id else None
        record = RunRecord(
            id=cmd.run_id, task_id=cmd.task_id, message_id=cmd.message_id,
            executor=cmd.executor, repo=cmd.repo, base_ref=cmd.base_ref,
            instruction=cmd.instruction, resume_session=cmd.resume_session,
            previous_run_id=cmd.previous_run_id, timeout_seconds=cmd.timeout_seconds,
            accepted_at=cmd.accepted_at, queued_at=now, updated_at=now,
            pin_host=previous.host if previous else None,
        )
        run, created = await self.runs.insert_if_absent(record)
        if created:
            await self.emit(run)
            self.log.info("run_queued", run_id=run.id, executor=run.executor)
        canceled = await self.runs.pending_cancel(run.id)
        if canceled is not None:
            await self.apply(run.id, lambda r: machine.cancel(r, canceled, now), always_emit=True)
            return
        await self.apply(run.id, lambda r: machine.prepare(r, now), always_emit=True)

    async def on_cancel_run(self, cmd: CancelRun, delivery: Delivery) -> None:
        now = self.clock()
        if await self.runs.get(cmd.run_id) is None:
            # The StartRun has not arrived yet (an outbox can deliver it late).
            await self.runs.remember_cancel(cmd.run_id, cmd.reason, now)
            return
        run = await self.apply(cmd.run_id, lambda r: machine.cancel(r, cmd.reason, now))
        if run is not None:
            await self.stop_agent(cmd.run_id, cmd.reason)

    async def fail_overdue(self, run: RunRecord) -> bool:
        """Fail the run if its attempt is overdue (see machine.overdue); True if it was.
        `run` is the reconciler's snapshot: only an overdue one costs a transaction."""
        now, grace = self.clock(), self.settings.overdue_grace_seconds
        if machine.overdue(run, now, grace) is None:
            return False
        failed = await self.apply(run.id, lambda r: machine.overdue(r, now, grace))
        if failed is None:
            return False
        self.log.warning("run_overdue", run_id=run.id, due_at=str(failed.agent_due_at))
        metrics.runs_overdue_total.labels(failed.executor).inc()
        await self.stop_agent(run.id, failed.reason or "overdue")
        return True

    async def fail_if_no_runner(self, run: RunRecord) -> bool:
        """A stalled run waiting for its agent on a host with no runner for its executor
        (see schemas/hosts.py): retried, or failed saying so. True if it was."""
        if run.state != "running" or run.agent_started_at or not run.host:
            return False
        if await self.bus.has_consumer(CMD.name, exec_durable(run.executor, run.host)):
            return False
        now, settings = self.clock(), self.settings
        if not await self._withdraw_step(run, lambda r: machine.no_runner(
                r, now, settings.max_attempts, settings.retry_backoff_seconds)):
            return False
        self.log.warning("run_without_runner", run_id=run.id, host=run.host,
                         executor=run.executor)
        return True

    async def unpin_if_untaken(self, run: RunRecord) -> bool:
        """A follow-up whose pinned host has not taken its prepare for pin_wait_seconds
        (the host is gone): re-issue it to any host. True if it was unpinned."""
        waited = (self.clock() - run.updated_at).total_seconds()
        if run.pin_host is None or waited < self.settings.pin_wait_seconds:
            return False
        # the host may come back: it must not make a second workspace
        if not await self._withdraw_step(run, machine.unpin):
            return False
        self.log.warning("run_unpinned", run_id=run.id, host=run.pin_host)
        return True

    async def _withdraw_step(self, run: RunRecord, change: Change) -> bool:
        """Apply `change`; if it applied, purge the command `run`'s state was waiting on
        (nobody is to take it any more). True if it applied."""
        waiting = step_command(run, self.settings.branch_prefix)
        if await self.apply(run.id, change) is None:
            return False
        if waiting is not None:
            await self.bus.purge_subject(CMD.name, waiting.subject())
        return True

    async def stop_agent(self, run_id: str, reason: str) -> None:
        """Whoever runs the agent kills its process group: a broadcast for the runner
        holding it now, a KV flag for a runner that picks the command up later."""
        await self.bus.kv_put(CANCEL_BUCKET.name, run_id, reason.encode())
        await self.bus.publish(CancelRequested(run_id=run_id, reason=reason))

    # -- worker events ------------------------------------------------------------------

    async def on_workspace_ready(self, event: WorkspaceReady, delivery: Delivery) -> None:
        await self.apply(event.run_id, lambda r: machine.workspace_ready(r, event),
                          attempt=event.attempt)

    async def on_workspace_failed(self, event: WorkspaceFailed, delivery: Delivery) -> None:
        now = self.clock()
        await self.apply(
            event.run_id,
            lambda r: machine.workspace_failed(r, event, now, self.settings.max_attempts,
                                               self.settings.retry_backoff_seconds),
            attempt=event.attempt,
        )

    async def on_execution_started(self, event: ExecutionStarted, delivery: Delivery) -> None:
        run = await self.apply(event.run_id, lambda r: machine.agent_started(r, event))
        if run is not None and run.agent_started_at == event.started_at:
            # the seed's "job start p95": accepted → agent process started (first start)
            waited = (event.started_at - run.accepted_at).total_seconds()
            metrics.agent_start_latency.labels(run.executor).observe(max(0.0, waited))

    async def on_execution_finished(self, event: ExecutionFinished, delivery: Delivery) -> None:
        now = self.clock()
        await self.apply(
            event.run_id,
            lambda r: machine.execution_finished(r, event, now, self.settings.max_attempts,
                                                 self.settings.retry_backoff_seconds),
            attempt=event.attempt,
        )

    async def on_workspace_committed(self, event: WorkspaceCommitted, delivery: Delivery) -> None:
        now = self.clock()
        await self.apply(event.run_id, lambda r: machine.workspace_committed(r, event, now),
                          attempt=event.attempt)

    async def on_dead_letter(self, dead: DeadLetteredCommand, delivery: Delivery) -> None:
        # Only run commands fail a run: other services dead-letter other things here.
        original = delivery.headers.get("Zloth-Original-Subject", "")
        if dead.run_id is None or not original.startswith(("zloth.cmd.ws.", "zloth.cmd.exec.")):
            return
        reason = delivery.headers.get("Zloth-Reason", "command dead-lettered")
        now = self.clock()
        await self.apply(dead.run_id, lambda r: machine.dead_lettered(r, dead.attempt, reason,
                                                                       now))

    # -- transitions and publishing -----------------------------------------------------

    async def apply(
        self, run_id: str, change: Change, *, attempt: int | None = None,
        always_emit: bool = False,
    ) -> RunRecord | None:
        changed = await self.runs.update(run_id, change, self.clock())
        if changed is not None:
            metrics.run_transitions_total.labels(changed.state).inc()
            self.log.info("run_transition", run_id=run_id, state=changed.state,
                          attempt=changed.attempt, reason=changed.reason)
            await self.emit(changed)
            return changed
        current = await self.runs.get(run_id)
        # A redelivered event of the current attempt: re-publish what the state asks for,
        # in case the previous delivery crashed between its write and its publish.
        if current is not None and (always_emit or attempt == current.attempt):
            await self.emit(current)
        return None

    async def emit(self, run: RunRecord, *, msg_id: str | None = None) -> None:
        await self.bus.publish(snapshot(run))
        step = step_command(run, self.settings.branch_prefix)
        if step is not None:
            await self.bus.publish(step, msg_id=msg_id and f"{step.msg_id()}:{msg_id}")
        if run.terminal:
            await self.bus.publish(
                LogChunk(run_id=run.id, attempt=run.attempt, seq=0, final=True, state=run.state)
            )


def snapshot(run: RunRecord) -> RunStateChanged:
    return RunStateChanged(
        run_id=run.id, task_id=run.task_id, executor=run.executor, state=run.state,
        version=run.version, attempt=run.attempt, at=run.updated_at, reason=run.reason,
        queued_at=run.queued_at, started_at=run.started_at,
        agent_started_at=run.agent_started_at, finished_at=run.finished_at,
        result=run.result,
    )


def with_conflicts(instruction: str, conflicts: list[str]) -> str:
    """The AI resolution pass: the agent resolves the merge first (zloth then refuses to
    commit while any conflict marker remains)."""
    if not conflicts:
        return instruction
    files = "\n".join(f"- {path}" for path in conflicts)
    return (
        "Merging the base branch into this branch left conflicts in these files:\n"
        f"{files}\nResolve every conflict (remove all <<<<<<< ======= >>>>>>> markers, "
        "keeping the intent of both sides), then do the following task.\n\n" + instruction
    )


def step_command(run: RunRecord, branch_prefix: str) -> Command | None:
    """The command the run's current state waits on, if any."""
    branch = run.branch or f"{branch_prefix}/{run.id}"
    if run.state == "preparing":
        return PrepareWorkspace(run_id=run.id, attempt=run.attempt, repo=run.repo,
                                base_ref=run.base_ref, branch=branch,
                                previous_run_id=run.previous_run_id, host=run.pin_host)
    if run.state == "running" and run.workspace_path and run.base_sha:
        return ExecuteRun(
            run_id=run.id, task_id=run.task_id, attempt=run.attempt, executor=run.executor,
            workspace_path=run.workspace_path, base_sha=run.base_sha,
            instruction=with_conflicts(run.instruction, run.conflicts),
            resume_session=run.resume_session, timeout_seconds=run.timeout_seconds,
            host=run.host or "",
        )
    if run.state == "committing" and run.workspace_path and run.base_sha:
        summary = (run.result.summary or "").strip()
        title = summary.splitlines()[0][:72] if summary else f"zloth: {run.executor} run"
        body = summary if summary and summary != title else ""
        return CommitWorkspace(
            run_id=run.id, attempt=run.attempt, path=run.workspace_path, branch=branch,
            base_sha=run.base_sha, host=run.host or "",
            message=f"{title}\n\n{body}\n\nInstruction: {run.instruction[:2000]}".strip(),
        )
    return None
