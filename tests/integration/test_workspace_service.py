"""The workspace-manager service on a real nats-server: prepare → ready, commit →
committed, the pool filled in the background, and the scheduler's terminal run event
(through the per-host run-event consumer) lets the refill recycle the run's workspace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec

from schemas.base import utcnow
from schemas.runs import RepoRef, RunStateChanged
from schemas.workspaces import (
    CommitWorkspace,
    PrepareWorkspace,
    WorkspaceCommitted,
    WorkspaceReady,
)
from services.core.bus import Bus
from services.core.natsd import NatsServer
from services.core.runtime import run_services
from services.workspace_manager.service import unit
from services.workspace_manager.settings import WorkspaceSettings
from tests.support.buses import wait_for
from tests.support.gitrepo import make_origin


@asynccontextmanager
async def running(settings: WorkspaceSettings) -> AsyncIterator[None]:
    stopping = asyncio.Event()
    ready = asyncio.Event()

    async def on_ready(_: object) -> None:
        ready.set()

    task = asyncio.create_task(run_services(settings, [unit(settings)], settings.nats_url,
                                            ready=on_ready, stopping=stopping,
                                            drain_seconds=5))
    try:
        async with asyncio.timeout(20):
            await ready.wait()
        yield
    finally:
        stopping.set()
        async with asyncio.timeout(30):
            await task


async def _next(bus: Bus, subject: str, kind: type[msgspec.Struct]) -> msgspec.Struct:
    async with asyncio.timeout(20):
        async for _, _, data in bus.replay(subject):
            return msgspec.json.decode(data, type=kind)
    raise AssertionError(f"nothing on {subject}")


async def test_terminal_run_event_makes_the_workspace_warm(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path / "upstream")
    settings = WorkspaceSettings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                                 pool_size=1, keep_finished_seconds=0, gc_interval_seconds=0.5,
                                 host_id="host.a")
    repo = RepoRef(repo_id="acme/widgets", url=str(origin))
    bus = await Bus.connect(nats_server.url, name="test")
    try:
        async with running(settings):
            await bus.publish(PrepareWorkspace(run_id="run1", attempt=1, repo=repo,
                                               branch="zloth/run1"))
            ready = await _next(bus, "zloth.evt.ws.ready", WorkspaceReady)
            assert isinstance(ready, WorkspaceReady) and ready.host == "host-a"
            (Path(ready.path) / "new.txt").write_text("agent\n")
            await bus.publish(CommitWorkspace(run_id="run1", attempt=1, path=ready.path,
                                              branch=ready.branch, base_sha=ready.base_sha,
                                              message="m", host=ready.host))
            committed = await _next(bus, "zloth.evt.ws.committed", WorkspaceCommitted)
            assert isinstance(committed, WorkspaceCommitted) and committed.commit_sha
            await bus.publish(RunStateChanged(run_id="run1", task_id="t1", executor="x",
                                              state="succeeded", version=5, attempt=1,
                                              at=utcnow()))
            pool = settings.workspaces_root / ".pool"
            await wait_for(lambda: any(pool.glob("*/ready-*")), timeout=20)  # made fresh
            await bus.publish(PrepareWorkspace(run_id="run2", attempt=1, repo=repo,
                                               branch="zloth/run2"))
            # run2 takes the warm entry; the refill recycles run1's finished workspace.
            await wait_for(lambda: not Path(ready.path).exists()
                           and any(pool.glob("*/ready-*")), timeout=20)
    finally:
        await bus.close()
    entry = next(pool.glob("*/ready-*"))
    assert not (entry / "new.txt").exists()
    assert (settings.workspaces_root / "run2" / "README.md").is_file()
