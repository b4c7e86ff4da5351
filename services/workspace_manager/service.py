"""Wire the workspace-manager: one consumer per command kind over one WorkspaceFactory."""

from __future__ import annotations

from functools import partial
from typing import Any

from schemas.streams import CMD, ConsumerSpec
from schemas.workspaces import CommitWorkspace, PrepareWorkspace
from services.core.bus import Consume
from services.core.runtime import Deps, Service, Unit
from services.workspace_manager import NAME
from services.workspace_manager.handlers import WorkspaceHandlers
from services.workspace_manager.mirrors import MirrorCache
from services.workspace_manager.settings import WorkspaceSettings
from services.workspace_manager.workspaces import WorkspaceFactory


async def build(settings: WorkspaceSettings, deps: Deps) -> Service:
    mirrors = MirrorCache(settings.mirrors_root, settings.mirror_refresh_seconds)
    factory = WorkspaceFactory(mirrors, settings.workspaces_root)
    handlers = WorkspaceHandlers(factory, deps.bus, settings)
    consumers: list[Consume[Any]] = [
        Consume(ConsumerSpec(stream=CMD.name, durable="ws-prepare",
                             filter_subject="zloth.cmd.ws.prepare.>", ack_wait_seconds=60,
                             max_deliver=5, max_ack_pending=64),
                PrepareWorkspace, handlers.on_prepare, concurrency=16),
        Consume(ConsumerSpec(stream=CMD.name, durable="ws-commit",
                             filter_subject="zloth.cmd.ws.commit.>", ack_wait_seconds=60,
                             max_deliver=5, max_ack_pending=64),
                CommitWorkspace, handlers.on_commit, concurrency=16),
    ]
    return Service(name=NAME, consumers=consumers)


def unit(settings: WorkspaceSettings) -> Unit:
    return Unit(name=NAME, package="services.workspace_manager", build=partial(build, settings))
