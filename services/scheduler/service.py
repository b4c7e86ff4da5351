"""Wire the scheduler: its consumers, the retry ticker and the reconciler."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import partial
from typing import Any

from schemas.executions import ExecutionFinished, ExecutionStarted
from schemas.runs import CancelRun, StartRun
from schemas.streams import CANCEL_BUCKET, CMD, DLQ, EVT, ConsumerSpec
from schemas.workspaces import WorkspaceCommitted, WorkspaceFailed, WorkspaceReady
from services.core import metrics
from services.core.bus import Consume
from services.core.runtime import Deps, Service, Unit, sleep_or_stop
from services.scheduler import NAME, machine
from services.scheduler.handlers import DeadLetteredCommand, Scheduler, step_command
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import RunStore


def _spec(stream: str, durable: str, subject: str, **extra: float) -> ConsumerSpec:
    return ConsumerSpec(stream=stream, durable=durable, filter_subject=subject,
                        ack_wait_seconds=30.0, max_deliver=10, **extra)  # type: ignore[arg-type]


async def build(settings: SchedulerSettings, deps: Deps) -> Service:
    scheduler = Scheduler(RunStore(deps.store), deps.bus, settings)
    consumers: list[Consume[Any]] = [
        Consume(_spec(CMD.name, "sched-start", "zloth.cmd.sched.start.>"), StartRun,
                scheduler.on_start_run, concurrency=32),
        Consume(_spec(CMD.name, "sched-cancel", "zloth.cmd.sched.cancel.>"), CancelRun,
                scheduler.on_cancel_run, concurrency=8),
        Consume(_spec(EVT.name, "sched-ws-ready", "zloth.evt.ws.ready"), WorkspaceReady,
                scheduler.on_workspace_ready, concurrency=32, fenced=False),
        Consume(_spec(EVT.name, "sched-ws-failed", "zloth.evt.ws.failed"), WorkspaceFailed,
                scheduler.on_workspace_failed, concurrency=8, fenced=False),
        Consume(_spec(EVT.name, "sched-ws-committed", "zloth.evt.ws.committed"),
                WorkspaceCommitted, scheduler.on_workspace_committed, concurrency=32,
                fenced=False),
        Consume(_spec(EVT.name, "sched-exec-started", "zloth.evt.exec.started"),
                ExecutionStarted, scheduler.on_execution_started, concurrency=32, fenced=False),
        Consume(_spec(EVT.name, "sched-exec-finished", "zloth.evt.exec.finished"),
                ExecutionFinished, scheduler.on_execution_finished, concurrency=32,
                fenced=False),
        Consume(_spec(DLQ.name, "sched-dlq", "zloth.dlq.>"), DeadLetteredCommand,
                scheduler.on_dead_letter, concurrency=4, fenced=False),
    ]
    return Service(
        name=NAME,
        consumers=consumers,
        tasks=[partial(retry_ticker, scheduler), partial(reconciler, scheduler)],
        owned_streams=[CMD, EVT, DLQ],
        buckets=[CANCEL_BUCKET],
    )


async def retry_ticker(scheduler: Scheduler, stopping: asyncio.Event) -> None:
    """Start the next attempt of runs whose retry delay has passed."""
    while not stopping.is_set():
        for run_id in await scheduler.runs.due_retries(scheduler.clock()):
            await scheduler.apply(run_id, machine.retry_due)
        await sleep_or_stop(stopping, scheduler.settings.tick_seconds)


async def reconciler(scheduler: Scheduler, stopping: asyncio.Event) -> None:
    """Re-publish the step command of runs gone silent whose command is no longer in the
    work queue (lost before it was stored, or dead without an event)."""
    while not stopping.is_set():
        await sleep_or_stop(stopping, scheduler.settings.reconcile_seconds)
        try:
            await reconcile_once(scheduler)
        except Exception:
            scheduler.log.exception("reconcile_failed")


async def reconcile_once(scheduler: Scheduler) -> int:
    now = scheduler.clock()
    republished = 0
    older = now - timedelta(seconds=scheduler.settings.stall_seconds)
    for run in await scheduler.runs.stalled(older):
        if (await scheduler.fail_overdue(run) or await scheduler.unpin_if_untaken(run)
                or await scheduler.fail_if_no_runner(run)):
            continue
        step = step_command(run, scheduler.settings.branch_prefix)
        if step is None or await scheduler.bus.has_message(CMD.name, step.subject()):
            continue
        scheduler.log.warning("run_reconciled", run_id=run.id, state=run.state)
        await scheduler.emit(run, msg_id=f"r{int(now.timestamp())}")
        republished += 1
    for state, count in (await scheduler.runs.count_by_state()).items():
        metrics.runs_by_state.labels(state).set(count)
    return republished


def unit(settings: SchedulerSettings) -> Unit:
    return Unit(name=NAME, package="services.scheduler", build=partial(build, settings))
