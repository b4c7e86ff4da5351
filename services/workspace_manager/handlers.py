"""Workspace commands: prepare a run's workspace from the repository's mirror, commit (and
push) what the agent changed; run state events tell which workspaces are finished.

Bad input (unknown ref, a follow-up's merge conflict, conflict markers left, a push the
remote refuses) becomes a WorkspaceFailed event; transient git failures are retried by the
bus and reported as retryable on the last delivery.
"""

from __future__ import annotations

from pathlib import Path

from schemas.runs import RunStateChanged
from schemas.workspaces import (
    CommitWorkspace,
    PrepareWorkspace,
    WorkspaceCommitted,
    WorkspaceFailed,
    WorkspacePushed,
    WorkspaceReady,
)
from services.core.bus import Bus, Delivery
from services.core.errors import Retry
from services.core.git import GitError
from services.core.telemetry import get_logger
from services.workspace_manager.merging import MergeConflict
from services.workspace_manager.mirrors import UnknownRefError
from services.workspace_manager.push import PushRejected, PushResult
from services.workspace_manager.settings import WorkspaceSettings
from services.workspace_manager.workspaces import WorkspaceError, WorkspaceFactory

_PERMANENT = (UnknownRefError, ValueError, WorkspaceError, MergeConflict, PushRejected)


class WorkspaceHandlers:
    def __init__(self, factory: WorkspaceFactory, bus: Bus, settings: WorkspaceSettings) -> None:
        self.factory = factory
        self.bus = bus
        self.settings = settings
        self.log = get_logger(service="workspace-manager")

    async def on_prepare(self, cmd: PrepareWorkspace, delivery: Delivery) -> None:
        try:
            workspace = await self.factory.create(
                cmd.run_id, cmd.repo.repo_id, cmd.repo.url, cmd.base_ref, cmd.branch,
                cmd.sparse_paths, cmd.previous_run_id,
            )
            if cmd.attempt > 1:  # a retry starts from the base, whatever the last attempt did
                await self.factory.reset(Path(workspace.path), workspace.base_sha)
        except _PERMANENT as exc:
            await self._failed(cmd.run_id, cmd.attempt, "prepare", str(exc), retryable=False)
            return
        except GitError as exc:
            await self._transient(cmd.run_id, cmd.attempt, "prepare", exc, delivery)
            return
        await self.bus.publish(WorkspaceReady(
            run_id=cmd.run_id, attempt=cmd.attempt, path=str(workspace.path),
            branch=workspace.branch, base_sha=workspace.base_sha, base_ref=workspace.base_ref,
            conflicts=workspace.conflicts, host=self.settings.subject_host,
        ))
        self.log.info("workspace_ready", run_id=cmd.run_id, path=str(workspace.path))

    async def on_commit(self, cmd: CommitWorkspace, delivery: Delivery) -> None:
        stage = "commit"
        pushed: PushResult | None = None
        try:
            result = await self.factory.commit(
                Path(cmd.path), cmd.base_sha, cmd.message, cmd.run_id,
                summary_file=self.settings.summary_file,
                max_diff_bytes=self.settings.max_diff_bytes,
            )
            if self.settings.push and result.commit_sha is not None:
                stage = "push"
                pushed = await self.factory.push(
                    Path(cmd.path), attempts=self.settings.push_attempts
                )
        except _PERMANENT as exc:
            await self._failed(cmd.run_id, cmd.attempt, stage, str(exc), retryable=False)
            return
        except GitError as exc:
            await self._transient(cmd.run_id, cmd.attempt, stage, exc, delivery)
            return
        if pushed is not None:
            await self.bus.publish(WorkspacePushed(
                run_id=cmd.run_id, attempt=cmd.attempt, branch=cmd.branch, sha=pushed.sha,
                merged_remote=bool(pushed.merged),
            ))
        await self.bus.publish(WorkspaceCommitted(
            run_id=cmd.run_id, attempt=cmd.attempt, branch=cmd.branch, base_sha=cmd.base_sha,
            commit_sha=result.commit_sha, files_changed=result.files_changed, diff=result.diff,
            diff_truncated=result.diff_truncated, rejected_paths=result.rejected_paths,
        ))
        self.log.info("workspace_committed", run_id=cmd.run_id, commit=result.commit_sha,
                      pushed=pushed.sha if pushed else None)

    async def on_run_state(self, event: RunStateChanged, delivery: Delivery) -> None:
        """A terminal run's workspace becomes finished (recyclable, collectable) on the host
        that holds it; every host sees the event (one durable consumer per host)."""
        if event.terminal and await self.factory.finish(event.run_id):
            self.log.info("workspace_finished", run_id=event.run_id, state=event.state)

    async def _transient(
        self, run_id: str, attempt: int, stage: str, exc: GitError, delivery: Delivery
    ) -> None:
        if not delivery.last:
            raise Retry(min(2.0 ** delivery.num_delivered, 30.0), f"git failed: {exc}")
        await self._failed(run_id, attempt, stage, str(exc), retryable=True)

    async def _failed(
        self, run_id: str, attempt: int, stage: str, reason: str, *, retryable: bool
    ) -> None:
        self.log.warning("workspace_failed", run_id=run_id, stage=stage, reason=reason)
        await self.bus.publish(WorkspaceFailed(
            run_id=run_id, attempt=attempt, stage=stage, reason=reason[:2000],
            retryable=retryable,
        ))
