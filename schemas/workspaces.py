"""Workspace commands (scheduler → workspace-manager) and their events."""

from __future__ import annotations

from typing import ClassVar

from schemas.base import Command, Event
from schemas.hosts import ANY_HOST
from schemas.runs import FileChange, RepoRef


class PrepareWorkspace(Command, frozen=True, kw_only=True):
    """Make (or find) the run's workspace on branch `branch` off `base_ref`."""

    subject_prefix: ClassVar[str] = "zloth.cmd.ws.prepare"

    run_id: str
    attempt: int
    repo: RepoRef
    base_ref: str | None = None
    branch: str
    sparse_paths: list[str] = []
    # A follow-up: continue that run's branch (synced with the remote, base merged in).
    previous_run_id: str | None = None
    # Pinned to this host's workspace-managers (a follow-up goes where its previous run's
    # workspace and agent session are); None: any host takes it.
    host: str | None = None

    def subject(self) -> str:
        if self.host:
            return f"{self.subject_prefix}.{self.host}.{self.run_id}"
        return f"{self.subject_prefix}.{self.run_id}"

    def msg_id(self) -> str:
        pinned = f":{self.host}" if self.host else ""
        return f"run:{self.run_id}:attempt:{self.attempt}:prepare{pinned}"


class WorkspaceReady(Event, frozen=True, kw_only=True):
    subject_prefix: ClassVar[str] = "zloth.evt.ws.ready"

    run_id: str
    attempt: int
    path: str
    branch: str
    base_sha: str
    base_ref: str
    # A follow-up's merge left these files in conflict for the agent to resolve (zloth
    # checks no conflict marker remains before it commits).
    conflicts: list[str] = []
    host: str = ""  # the workspace-manager host holding the workspace

    def msg_id(self) -> str:
        return f"run:{self.run_id}:attempt:{self.attempt}:ws-ready"


class CommitWorkspace(Command, frozen=True, kw_only=True):
    """Stage everything the agent changed and commit it (zloth commits, agents never do)."""

    subject_prefix: ClassVar[str] = "zloth.cmd.ws.commit"

    run_id: str
    attempt: int
    path: str
    branch: str
    base_sha: str
    message: str
    host: str = ""  # where the workspace is (WorkspaceReady.host): only it can commit

    def subject(self) -> str:
        return f"{self.subject_prefix}.{self.host or ANY_HOST}.{self.run_id}"

    def msg_id(self) -> str:
        return f"run:{self.run_id}:attempt:{self.attempt}:commit"


class WorkspaceCommitted(Event, frozen=True, kw_only=True):
    subject_prefix: ClassVar[str] = "zloth.evt.ws.committed"

    run_id: str
    attempt: int
    branch: str
    base_sha: str
    commit_sha: str | None  # None: the agent changed nothing
    files_changed: list[FileChange] = []
    diff: str = ""
    diff_truncated: bool = False
    rejected_paths: list[str] = []

    def msg_id(self) -> str:
        return f"run:{self.run_id}:attempt:{self.attempt}:committed"


class WorkspaceFailed(Event, frozen=True, kw_only=True):
    subject_prefix: ClassVar[str] = "zloth.evt.ws.failed"

    run_id: str
    attempt: int
    stage: str  # "prepare" | "commit" | "push"
    reason: str
    retryable: bool = False

    def msg_id(self) -> str:
        return f"run:{self.run_id}:attempt:{self.attempt}:ws-failed:{self.stage}"


class WorkspacePushed(Event, frozen=True, kw_only=True):
    """The run's branch is on the remote at `sha` (after merging what others pushed)."""

    subject_prefix: ClassVar[str] = "zloth.evt.ws.pushed"

    run_id: str
    attempt: int
    branch: str
    sha: str
    merged_remote: bool = False  # the remote had moved: zloth merged it before pushing

    def msg_id(self) -> str:
        return f"run:{self.run_id}:attempt:{self.attempt}:pushed"
