"""Wire the workspace-manager: a consumer per command kind, one for run state events (its
durable is per host: every host must learn which of its workspaces are finished), the warm
pool's filler and the janitor, over one WorkspaceFactory.

Several hosts: a run's workspace lives on the host that made it, and the runner must run
the agent there. Each host runs its workspace-manager replicas and runners side by side;
WorkspaceReady says which `host` holds the workspace, and the scheduler is to publish the
run's later commands (ExecuteRun, CommitWorkspace, a follow-up's PrepareWorkspace) on a
per-host subject (`zloth.cmd.<kind>.<host>.<run_id>`) consumed only there. Until the
scheduler does, run one host (replicas on it share the disk and the flocks).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from schemas.runs import RunStateChanged
from schemas.streams import CMD, EVT, ConsumerSpec
from schemas.workspaces import CommitWorkspace, PrepareWorkspace
from services.core.bus import Consume
from services.core.runtime import Deps, Service, Unit
from services.workspace_manager import NAME
from services.workspace_manager.gc import Janitor
from services.workspace_manager.handlers import WorkspaceHandlers
from services.workspace_manager.mirrors import MirrorCache
from services.workspace_manager.pool import WarmPool
from services.workspace_manager.settings import WorkspaceSettings
from services.workspace_manager.workspaces import WorkspaceFactory


def make_factory(settings: WorkspaceSettings) -> tuple[WorkspaceFactory, Janitor]:
    mirrors = MirrorCache(settings.mirrors_root, settings.mirror_refresh_seconds,
                          blob_filter=settings.mirror_filter, tokens=settings.git_tokens)
    pool = WarmPool(settings.workspaces_root, mirrors, settings.pool_size,
                    settings.pool_idle_seconds)
    factory = WorkspaceFactory(mirrors, settings.workspaces_root, pool=pool,
                               conflicts=settings.conflict_policy, tokens=settings.git_tokens)
    janitor = Janitor(factory, retention_seconds=settings.retention_seconds,
                      keep_seconds=settings.keep_finished_seconds,
                      budget_bytes=settings.disk_budget_bytes)
    return factory, janitor


async def build(settings: WorkspaceSettings, deps: Deps) -> Service:
    factory, janitor = make_factory(settings)
    handlers = WorkspaceHandlers(factory, deps.bus, settings)
    host = settings.subject_host
    # Preparing: any host's (the taker's host is the workspace's), or pinned to this one.
    # Committing: only where the workspace is. See schemas/hosts.py.
    consumers: list[Consume[Any]] = [
        Consume(_command_consumer("ws-prepare-any", f"{PrepareWorkspace.subject_prefix}.*"),
                PrepareWorkspace, handlers.on_prepare, concurrency=16),
        Consume(_command_consumer(f"ws-prepare-{host}",
                                  f"{PrepareWorkspace.subject_prefix}.{host}.*"),
                PrepareWorkspace, handlers.on_prepare, concurrency=16),
        Consume(_command_consumer(f"ws-commit-{host}",
                                  f"{CommitWorkspace.subject_prefix}.{host}.*"),
                CommitWorkspace, handlers.on_commit, concurrency=16),
        Consume(ConsumerSpec(stream=EVT.name, durable=f"ws-runs-{host}",
                             filter_subject="zloth.evt.run.>", ack_wait_seconds=60,
                             max_deliver=5, max_ack_pending=256),
                RunStateChanged, handlers.on_run_state, concurrency=8),
    ]
    pool = factory.pool
    assert pool is not None

    async def health() -> dict[str, Any]:
        """For `/v1/status`: this host's disk as of the janitor's last sweep."""
        last = janitor.last
        return {"ok": deps.bus.connected, "host": host, "disk": {
            "workspaces_bytes": last.bytes if last else None,
            "workspaces": last.counts if last else {},
            "budget_bytes": settings.disk_budget_bytes,
            "mirrors_bytes": janitor.mirror_bytes if last else None,
        }}

    return Service(
        name=NAME,
        consumers=consumers,
        health=health,
        retired_consumers=[(CMD.name, "ws-prepare"), (CMD.name, "ws-commit")],
        tasks=[
            partial(pool.run, janitor.detach_finished),
            partial(janitor.run, every=settings.gc_interval_seconds,
                    mirrors_every=settings.mirror_maintenance_seconds),
        ],
    )


def _command_consumer(durable: str, subjects: str) -> ConsumerSpec:
    return ConsumerSpec(stream=CMD.name, durable=durable, filter_subject=subjects,
                        ack_wait_seconds=60, max_deliver=5, max_ack_pending=64)


def unit(settings: WorkspaceSettings) -> Unit:
    return Unit(name=NAME, package="services.workspace_manager", build=partial(build, settings))
