"""The scheduler alone against a real nats-server; the test plays the workspace-manager
and the runner by consuming their commands and publishing their events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from schemas.base import utcnow
from schemas.executions import ExecuteRun, ExecutionFinished
from schemas.runs import CancelRun, RepoRef, RunStateChanged, StartRun
from schemas.workspaces import (
    CommitWorkspace,
    PrepareWorkspace,
    WorkspaceCommitted,
    WorkspaceFailed,
    WorkspaceReady,
)
from services.core.bus import Bus
from services.core.natsd import NatsServer
from services.core.runtime import run_services
from services.scheduler.service import unit
from services.scheduler.settings import SchedulerSettings


@pytest.fixture
async def scheduler(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[None]:
    settings = SchedulerSettings(nats_url=nats_server.url, data_dir=tmp_path, max_attempts=2,
                                 retry_backoff_seconds=[0.2], reconcile_seconds=0.3,
                                 stall_seconds=1.0, tick_seconds=0.1, pin_wait_seconds=2.0)
    stopping = asyncio.Event()
    task = asyncio.create_task(run_services(settings, [unit(settings)], nats_server.url,
                                            stopping=stopping, drain_seconds=5))
    await asyncio.sleep(0.5)
    try:
        yield
    finally:
        stopping.set()
        await task


def start(run_id: str, previous_run_id: str | None = None) -> StartRun:
    return StartRun(run_id=run_id, task_id="task_1", message_id="msg_1",
                    repo=RepoRef(repo_id="repo_1", url="/nowhere"), instruction="do it",
                    executor="demo-a", accepted_at=utcnow(), previous_run_id=previous_run_id,
                    resume_session="sess-1" if previous_run_id else None)


def ready(prepare: PrepareWorkspace, host: str) -> WorkspaceReady:
    """What a workspace-manager on `host` answers to `prepare`."""
    return WorkspaceReady(run_id=prepare.run_id, attempt=prepare.attempt,
                          path=f"/w/{prepare.run_id}", branch=prepare.branch,
                          base_sha="a" * 40, base_ref="main", host=host)


async def states(bus: Bus, run_id: str, until: str, timeout: float = 10.0) -> list[str]:
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        async for _, _, data in bus.replay(f"zloth.evt.run.*.*.{run_id}"):
            seen.append(msgspec.json.decode(data, type=RunStateChanged).state)
            if seen[-1] == until:
                return seen
    return seen


async def next_command(bus: Bus, subject: str, kind: type, timeout: float = 10.0) -> object:
    async with asyncio.timeout(timeout):
        while not await bus.has_message("ZLOTH_CMD", subject):
            await asyncio.sleep(0.05)
    found = await bus.last_message("ZLOTH_CMD", subject)
    assert found is not None
    return msgspec.json.decode(found[1], type=kind)


@pytest.mark.usefixtures("scheduler")
async def test_a_retryable_workspace_failure_starts_a_second_attempt(bus: Bus) -> None:
    await bus.publish(start("run_a"))
    first = await next_command(bus, "zloth.cmd.ws.prepare.run_a", PrepareWorkspace)
    assert isinstance(first, PrepareWorkspace) and first.attempt == 1
    await bus.purge_subject("ZLOTH_CMD", "zloth.cmd.ws.prepare.run_a")
    await bus.publish(WorkspaceFailed(run_id="run_a", attempt=1, stage="prepare",
                                      reason="fetch failed", retryable=True))
    second = await next_command(bus, "zloth.cmd.ws.prepare.run_a", PrepareWorkspace)
    assert isinstance(second, PrepareWorkspace) and second.attempt == 2
    await bus.publish(ready(second, "h1"))
    execute = await next_command(bus, "zloth.cmd.exec.demo-a.h1.run_a", ExecuteRun)
    assert isinstance(execute, ExecuteRun) and execute.attempt == 2
    await bus.publish(ExecutionFinished(run_id="run_a", attempt=2, executor="demo-a",
                                        outcome="failed", reason="exit code 3",
                                        finished_at=utcnow()))
    seen = await states(bus, "run_a", "failed")
    assert seen == ["queued", "preparing", "retrying", "preparing", "running", "failed"]


@pytest.mark.usefixtures("scheduler")
async def test_a_lost_command_is_republished_by_the_reconciler(bus: Bus) -> None:
    await bus.publish(start("run_b"))
    await next_command(bus, "zloth.cmd.ws.prepare.run_b", PrepareWorkspace)
    # The workspace-manager "lost" it: gone from the queue, no event ever came.
    await bus.purge_subject("ZLOTH_CMD", "zloth.cmd.ws.prepare.run_b")
    again = await next_command(bus, "zloth.cmd.ws.prepare.run_b", PrepareWorkspace, 10)
    assert isinstance(again, PrepareWorkspace) and again.attempt == 1


@pytest.mark.usefixtures("scheduler")
async def test_a_cancel_before_its_start_cancels_the_run_when_it_comes(bus: Bus) -> None:
    await bus.publish(CancelRun(run_id="run_c", requested_at=utcnow()))
    await asyncio.sleep(0.5)
    await bus.publish(start("run_c"))
    seen = await states(bus, "run_c", "canceled")
    assert seen == ["queued", "canceled"]
    assert not await bus.has_message("ZLOTH_CMD", "zloth.cmd.ws.prepare.run_c")


@pytest.mark.usefixtures("scheduler")
async def test_a_dead_lettered_command_fails_its_run(bus: Bus) -> None:
    await bus.publish(start("run_d"))
    prepare = await next_command(bus, "zloth.cmd.ws.prepare.run_d", PrepareWorkspace)
    await bus.publish_raw("zloth.dlq.ws-prepare", msgspec.json.encode(prepare), msg_id="dlq-d",
                          headers={"Zloth-Original-Subject": "zloth.cmd.ws.prepare.run_d",
                                   "Zloth-Reason": "last delivery failed"})
    # A dead letter that is not a run command is ignored.
    await bus.publish_raw("zloth.dlq.log-relay-archive", b'{"run_id": "run_x"}', msg_id="x",
                          headers={"Zloth-Original-Subject": "zloth.logs.run_x"})
    seen = await states(bus, "run_d", "failed")
    assert seen[-1] == "failed"


async def run_on_host(bus: Bus, run_id: str, host: str) -> None:
    """Play host `host`: take the run's prepare, run and commit it there."""
    prepare = await next_command(bus, f"zloth.cmd.ws.prepare.{run_id}", PrepareWorkspace)
    assert isinstance(prepare, PrepareWorkspace)
    await bus.publish(ready(prepare, host))
    execute = await next_command(bus, f"zloth.cmd.exec.demo-a.{host}.{run_id}", ExecuteRun)
    assert isinstance(execute, ExecuteRun) and execute.host == host
    await bus.publish(ExecutionFinished(run_id=run_id, attempt=1, executor="demo-a",
                                        outcome="succeeded", session_id="sess-1",
                                        finished_at=utcnow()))
    commit = await next_command(bus, f"zloth.cmd.ws.commit.{host}.{run_id}", CommitWorkspace)
    assert isinstance(commit, CommitWorkspace) and commit.host == host
    await bus.publish(WorkspaceCommitted(run_id=run_id, attempt=1, branch=prepare.branch,
                                         base_sha="a" * 40, commit_sha="b" * 40))
    assert (await states(bus, run_id, "succeeded"))[-1] == "succeeded"


@pytest.mark.usefixtures("scheduler")
async def test_a_runs_commands_follow_its_workspace_host_and_a_follow_up_is_pinned(
    bus: Bus,
) -> None:
    await bus.publish(start("run_e"))
    await run_on_host(bus, "run_e", "hostb")
    await bus.publish(start("run_f", previous_run_id="run_e"))
    pinned = await next_command(bus, "zloth.cmd.ws.prepare.hostb.run_f", PrepareWorkspace)
    assert isinstance(pinned, PrepareWorkspace) and pinned.host == "hostb"
    assert not await bus.has_message("ZLOTH_CMD", "zloth.cmd.ws.prepare.run_f")
    await bus.publish(ready(pinned, "hostb"))
    execute = await next_command(bus, "zloth.cmd.exec.demo-a.hostb.run_f", ExecuteRun)
    assert isinstance(execute, ExecuteRun) and execute.resume_session == "sess-1"


@pytest.mark.usefixtures("scheduler")
async def test_a_follow_up_whose_host_never_takes_it_goes_to_any_host_without_resuming(
    bus: Bus,
) -> None:
    await bus.publish(start("run_g"))
    await run_on_host(bus, "run_g", "gone")
    await bus.publish(start("run_h", previous_run_id="run_g"))
    await next_command(bus, "zloth.cmd.ws.prepare.gone.run_h", PrepareWorkspace)
    # nobody on host "gone" takes it: after pin_wait_seconds any host may
    anywhere = await next_command(bus, "zloth.cmd.ws.prepare.run_h", PrepareWorkspace, 15)
    assert isinstance(anywhere, PrepareWorkspace) and anywhere.host is None
    assert not await bus.has_message("ZLOTH_CMD", "zloth.cmd.ws.prepare.gone.run_h")
    await bus.publish(ready(anywhere, "hosta"))
    execute = await next_command(bus, "zloth.cmd.exec.demo-a.hosta.run_h", ExecuteRun)
    assert isinstance(execute, ExecuteRun) and execute.resume_session is None


@pytest.mark.usefixtures("scheduler")
async def test_a_workspace_on_a_host_without_a_runner_for_its_executor_is_retried(
    bus: Bus,
) -> None:
    """No consumer `exec-demo-a-lonely` exists (no runner there serves demo-a): the attempt
    ends, a new one prepares anywhere, and the last one fails saying why."""
    await bus.publish(start("run_i"))
    for attempt in (1, 2):
        prepare = await next_command(bus, "zloth.cmd.ws.prepare.run_i", PrepareWorkspace, 15)
        assert isinstance(prepare, PrepareWorkspace) and prepare.attempt == attempt
        await bus.purge_subject("ZLOTH_CMD", "zloth.cmd.ws.prepare.run_i")
        await bus.publish(ready(prepare, "lonely"))
    seen = await states(bus, "run_i", "failed", timeout=20)
    assert seen == ["queued", "preparing", "running", "retrying", "preparing", "running",
                    "failed"]
    async with asyncio.timeout(5):  # purged right after the failure is published
        while await bus.has_message("ZLOTH_CMD", "zloth.cmd.exec.demo-a.lonely.run_i"):
            await asyncio.sleep(0.05)
    run = await bus.last_message("ZLOTH_EVT", "zloth.evt.run.failed.*.run_i")
    assert run is not None
    reason = msgspec.json.decode(run[1], type=RunStateChanged).reason
    assert reason == "no executor-runner serves demo-a on host lonely"
