"""What workspace-manager knows about each run's workspace, kept outside the workspace.

`<root>/.zloth/<run_id>.json` holds the record (where, which branch, the trusted `.git`
files, zloth's commit, when the run ended), `<run_id>.lock` the flock every change to that
workspace takes. A record outlives its directory (a tombstone with `removed_at`) so a
follow-up still finds the run's branch and commit after the workspace was recycled.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import msgspec

from services.workspace_manager.fsops import host_lock, try_host_lock
from services.workspace_manager.refs import valid_branch

# .git files (relative to .git) put back from zloth's copy before each zloth git call.
TRUSTED_GIT_FILES = (
    "config",
    "config.worktree",
    "info/sparse-checkout",
    "objects/info/alternates",
)
# .git files that would make git read another repository's config (commondir) or see a
# different history (shallow, grafts); zloth never creates them.
_FOREIGN_GIT_FILES = ("commondir", "shallow", "info/grafts")
# Locks a killed git leaves behind. Removed only under the workspace lock, when no agent runs.
_STALE_LOCKS = ("index.lock", "HEAD.lock", "packed-refs.lock", "config.lock")

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class WorkspaceError(Exception):
    """The workspace cannot be used: not made by this factory, or its .git was tampered with."""


class Workspace(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    branch: str
    base_sha: str
    base_ref: str  # what base_sha was resolved from (the default branch when none was asked)
    conflicts: list[str] = []  # files left in conflict for the agent to resolve


class CommitRecord(msgspec.Struct, frozen=True, kw_only=True):
    sha: str
    base_sha: str
    run_id: str
    rejected_paths: list[str]


class Record(msgspec.Struct, frozen=True, kw_only=True):
    workspace: Workspace
    git_files: dict[str, bytes | None]
    commit: CommitRecord | None = None  # zloth's commit, so a redelivered command reuses it
    repo_id: str = ""
    url: str = ""  # upstream, without credentials
    sparse: list[str] = []
    created_at: float = 0.0
    finished_at: float | None = None  # the scheduler said the run is terminal
    removed_at: float | None = None  # the directory is gone (removed or recycled)
    size: int = 0  # bytes on disk, measured when made and when the run ended
    previous_run_id: str | None = None
    merge_parent: str | None = None  # a merge left in conflict for the agent
    pushed_sha: str | None = None  # what zloth last pushed (the lease of its next push)


class RecordStore:
    """Records and locks under `<root>/.zloth`."""

    def __init__(self, root: Path) -> None:
        self.dir = root / ".zloth"

    def lock(self, run_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        return host_lock(self.dir / f"{run_id}.lock")

    @contextlib.asynccontextmanager
    async def try_lock(self, run_id: str) -> AsyncIterator[bool]:
        """Yield True holding the run's lock, False (without waiting) when someone holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with try_host_lock(self.dir / f"{run_id}.lock") as held:
            yield held

    def load(self, run_id: str) -> Record | None:
        try:
            return msgspec.json.decode((self.dir / f"{run_id}.json").read_bytes(), type=Record)
        except (OSError, msgspec.DecodeError):
            return None

    def require(self, run_id: str) -> Record:
        record = self.load(run_id)
        if record is None or record.removed_at is not None:
            raise WorkspaceError(f"no workspace for run {run_id}")
        return record

    def save(self, run_id: str, record: Record) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{run_id}.json.{secrets.token_hex(4)}"
        tmp.write_bytes(msgspec.json.encode(record))
        tmp.replace(self.dir / f"{run_id}.json")

    def delete(self, run_id: str) -> None:
        (self.dir / f"{run_id}.json").unlink(missing_ok=True)
        (self.dir / f"{run_id}.lock").unlink(missing_ok=True)

    def run_ids(self) -> Iterator[str]:
        if not self.dir.is_dir():
            return
        for entry in self.dir.iterdir():
            if entry.suffix == ".json" and not entry.name.startswith("."):
                yield entry.stem


def read_git_files(workspace: Path) -> dict[str, bytes | None]:
    files: dict[str, bytes | None] = {}
    for rel in TRUSTED_GIT_FILES:
        target = workspace / ".git" / rel
        files[rel] = target.read_bytes() if target.is_file() else None
    return files


def guard(path: Path, record: Record) -> None:
    """Undo what an agent may have done to `.git` to subvert zloth's own git calls."""
    gitdir = path / ".git"
    if gitdir.is_symlink() or not gitdir.is_dir():
        raise WorkspaceError(f"{path}: .git is not a directory")
    stale = (*_STALE_LOCKS, f"refs/heads/{record.workspace.branch}.lock")
    try:
        for rel in (*_FOREIGN_GIT_FILES, *stale):
            _put_git_file(gitdir, rel, None)
        for rel, content in record.git_files.items():
            _put_git_file(gitdir, rel, content)
    except OSError as exc:
        raise WorkspaceError(f"{path}: cannot restore .git: {exc}") from exc


def _put_git_file(gitdir: Path, rel: str, content: bytes | None) -> None:
    """Write (or, for None, remove) `.git/<rel>`, never through a symlink out of `.git`."""
    target = gitdir / rel
    if not target.parent.resolve().is_relative_to(gitdir.resolve()):
        raise WorkspaceError(f"{target.parent} leads out of {gitdir}")
    if content is None:
        target.unlink(missing_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.zloth-{secrets.token_hex(4)}")
    tmp.write_bytes(content)
    tmp.replace(target)  # replaces a planted symlink itself, never what it points to


def check_branch(branch: str) -> None:
    if not valid_branch(branch):
        raise ValueError(f"not a valid branch name: {branch!r}")


def check_run_id(run_id: str) -> None:
    if not RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id must match {RUN_ID.pattern}: {run_id!r}")


def check_sha(sha: str) -> None:
    if not _SHA.fullmatch(sha):
        raise ValueError(f"not a full commit sha: {sha!r}")


def check_relative(raw: str) -> str:
    """`raw` as a clean relative path inside the workspace (for sparse paths, the summary)."""
    p = raw.strip().strip("/")
    parts = p.split("/")
    if (
        not p
        or any(part in ("", ".", "..", ".git") for part in parts)
        or any(c in p for c in "\0\n\r")
    ):
        raise ValueError(f"not a relative path inside the workspace: {raw!r}")
    return p


def normalise_sparse(paths: Sequence[str]) -> list[str]:
    if isinstance(paths, str):  # a bare string would be read as one path per character
        raise TypeError("sparse_paths must be a list of paths")
    return sorted({check_relative(p) for p in paths})
