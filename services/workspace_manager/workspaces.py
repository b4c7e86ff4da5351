"""Per-run workspaces made from a mirror without copying objects, and zloth's commit of a run.

`<root>/<run_id>` is the run's workspace: taken from the warm pool (a rename and a checkout
of what differs) or made fresh (gitdirs.py), on the run's branch. A follow-up run continues
the previous run's branch, synced with the remote branch and with the base merged in
(followup.py, merging.py). What zloth does not trust the agent with lives in
`<root>/.zloth/` (records.py). Errors: ValueError / UnknownRefError (bad input),
WorkspaceError, MergeConflict, PushRejected, GitError (transient).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import msgspec
import structlog

from services.core.git import GitError, run_git
from services.core.metrics import git_clone_bytes, git_clone_seconds
from services.workspace_manager import merging
from services.workspace_manager.commits import (
    CommitResult,
    check_no_markers,
    commit_worktree,
    describe,
    recorded_commit,
)
from services.workspace_manager.credentials import auth_env, without_credentials
from services.workspace_manager.followup import locate, pending_merge, sync_and_merge
from services.workspace_manager.fsops import disk_usage, remove_tree
from services.workspace_manager.gitdirs import (
    checkout,
    checkout_new,
    detached_at,
    init_gitdir,
    set_sparse,
    start_branch,
    sync_refs,
)
from services.workspace_manager.mirrors import (
    RUNS_NAMESPACE,
    MirrorCache,
    default_branch,
    is_resolvable,
    keep_commit,
    resolve,
)
from services.workspace_manager.pool import WarmPool
from services.workspace_manager.push import PushResult, push_branch
from services.workspace_manager.records import (
    RUN_ID,
    CommitRecord,
    Record,
    RecordStore,
    Workspace,
    WorkspaceError,
    check_branch,
    check_relative,
    check_run_id,
    check_sha,
    guard,
    normalise_sparse,
    read_git_files,
)
from services.workspace_manager.refs import RefSnapshot, read_refs

__all__ = ["CommitResult", "Workspace", "WorkspaceError", "WorkspaceFactory"]

log = structlog.get_logger(__name__)

# Merge state a reset must clear (the agent's merge, or zloth's left for the agent).
_MERGE_STATE = ("MERGE_HEAD", "MERGE_MSG", "MERGE_MODE", "AUTO_MERGE", "CHERRY_PICK_HEAD",
                "REVERT_HEAD", "REBASE_HEAD")


class WorkspaceFactory:
    """Makes, resets, commits and pushes the workspaces under `root` (one per run)."""

    def __init__(
        self,
        mirrors: MirrorCache,
        root: Path,
        *,
        pool: WarmPool | None = None,
        conflicts: str = "fail",  # "fail" | "agent": what a follow-up's merge conflict does
        tokens: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if conflicts not in ("fail", "agent"):
            raise ValueError(f"conflicts must be 'fail' or 'agent', not {conflicts!r}")
        self.mirrors = mirrors
        self.root = root.absolute()
        self.records = RecordStore(self.root)
        self.pool = pool
        self.conflicts = conflicts
        self._tokens = dict(tokens or {})
        self._clock = clock

    async def create(
        self,
        run_id: str,
        repo_id: str,
        url: str,
        base_ref: str | None,
        branch: str,
        sparse_paths: Sequence[str] = (),
        previous_run_id: str | None = None,
    ) -> Workspace:
        """Make `<root>/<run_id>` on a new `branch` at `base_ref` (or, for a follow-up, on
        the previous run's branch); return it if already made."""
        check_run_id(run_id)
        if previous_run_id is not None:
            check_run_id(previous_run_id)
        check_branch(branch)
        sparse = normalise_sparse(sparse_paths)
        async with self.records.lock(run_id):
            found = await self._existing(run_id, branch, previous_run_id)
            if found is not None:
                return found
            # Broken, half-made by a crashed older version, or on another branch: start over.
            await remove_tree(self.root / run_id)
            return await self._make(run_id, repo_id, url, base_ref, branch, sparse,
                                    previous_run_id)

    async def reset(self, path: Path, base_sha: str) -> None:
        """Discard everything the agent did: the run's branch back at `base_sha`, tree clean
        (a conflict left for the agent is set up again)."""
        check_sha(base_sha)
        run_id = self._run_id_of(path)
        async with self.records.lock(run_id):
            record = self.records.require(run_id)
            guard(path, record)
            for name in _MERGE_STATE:
                (path / ".git" / name).unlink(missing_ok=True)
            # -B re-attaches the run's branch whatever the agent checked out; -f drops edits.
            await checkout(path, base_sha, record.workspace.branch)
            await run_git(["clean", "-ffdxq"], cwd=path)
            if record.merge_parent is not None:
                await merging.merge(path, record.merge_parent, "again", keep_conflicts=True)
            if record.commit is not None:
                self.records.save(run_id, msgspec.structs.replace(record, commit=None))

    async def commit(
        self,
        path: Path,
        base_sha: str,
        message: str,
        run_id: str,
        summary_file: str = ".zloth-summary.md",
        max_diff_bytes: int = 512 * 1024,
    ) -> CommitResult:
        """Commit the worktree on top of `base_sha` as one commit (idempotent per run_id)."""
        check_sha(base_sha)
        check_run_id(run_id)
        summary = check_relative(summary_file)
        ws_run = self._run_id_of(path)
        async with self.records.lock(ws_run):
            record = self.records.require(ws_run)
            guard(path, record)
            branch_ref = f"refs/heads/{record.workspace.branch}"
            parents = [base_sha, *await pending_merge(path, record.merge_parent)]
            done = await recorded_commit(path, record.commit, branch_ref, parents, run_id)
            if done is None:
                check_no_markers(path, record.workspace.conflicts)
                sha, rejected = await commit_worktree(
                    path, branch_ref, parents, message, run_id, summary
                )
                if sha is None:
                    return CommitResult(commit_sha=None, rejected_paths=rejected)
                done = CommitRecord(
                    sha=sha, base_sha=base_sha, run_id=run_id, rejected_paths=rejected
                )
                self.records.save(ws_run, msgspec.structs.replace(record, commit=done))
                await self._keep(path, record, done)
            return await describe(path, base_sha, done, max_diff_bytes)

    async def push(self, path: Path, *, attempts: int = 4, backoff: float = 0.5) -> PushResult:
        """Push the run's branch upstream (push.py); remember the sha for the next lease."""
        run_id = self._run_id_of(path)
        async with self.records.lock(run_id):
            record = self.records.require(run_id)
            guard(path, record)
            await run_git(["symbolic-ref", "HEAD", f"refs/heads/{record.workspace.branch}"],
                          cwd=path)
            lease = record.pushed_sha or await self._remote_tip(record)
            env = auth_env(record.url, self._tokens)
            result = await push_branch(path, record.url, record.workspace.branch, lease, env,
                                       attempts=attempts, backoff=backoff)
            self.records.save(run_id, msgspec.structs.replace(record, pushed_sha=result.sha))
            return result

    async def finish(self, run_id: str) -> bool:
        """The run is terminal: its workspace may be recycled or removed from now on."""
        if not RUN_ID.fullmatch(run_id) or self.records.load(run_id) is None:
            return False  # another host's run (every host sees every run's events)
        async with self.records.lock(run_id):
            record = self.records.load(run_id)
            if record is None or record.finished_at is not None or record.removed_at is not None:
                return False
            # Measured now rather than when made: off the path a run waits on, and what the
            # run's workspace came to weigh (its build outputs included).
            size = await asyncio.to_thread(disk_usage, self.root / run_id)
            git_clone_bytes.labels(kind="workspace").observe(size)
            self.records.save(run_id, msgspec.structs.replace(
                record, finished_at=self._clock(), size=size))
        if self.pool is not None:
            self.pool.wake.set()
        return True

    async def _existing(
        self, run_id: str, branch: str, previous_run_id: str | None
    ) -> Workspace | None:
        record = self.records.load(run_id)
        path = self.root / run_id
        if record is None or record.removed_at is not None or not path.is_dir():
            return None
        same = record.workspace.branch == branch or (
            previous_run_id is not None and record.previous_run_id == previous_run_id
        )
        if not same:
            return None
        try:
            guard(path, record)
            head = await run_git(["symbolic-ref", "--quiet", "HEAD"], cwd=path, check=False)
            commit = await run_git(
                ["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], cwd=path, check=False
            )
        except (WorkspaceError, GitError):
            return None
        if head.stdout.strip() != f"refs/heads/{record.workspace.branch}" or commit.code != 0:
            return None
        return record.workspace

    async def _make(
        self,
        run_id: str,
        repo_id: str,
        url: str,
        base_ref: str | None,
        branch: str,
        sparse: list[str],
        previous_run_id: str | None,
    ) -> Workspace:
        mirror = await self.mirrors.ensure(repo_id, url, base_ref)
        refs = read_refs(mirror)
        ref = base_ref or refs.head or await default_branch(mirror)
        base_sha = refs.branch_sha(ref) or await resolve(mirror, ref)
        start, remote = base_sha, None
        if previous_run_id is not None:
            found = await locate(mirror, previous_run_id, self.records.load(previous_run_id),
                                 branch)
            branch, remote = found.branch, found.remote
            start = found.start or found.remote or base_sha
        final = self.root / run_id
        # Made under a temporary name and renamed: a crash never leaves a half-made workspace
        # under the final name (and the janitor knows a .tmp- of a run whose lock is free).
        tmp = self.root / f".tmp-{run_id}-{secrets.token_hex(4)}"
        started = time.monotonic()
        try:
            kind = await self._materialise(tmp, mirror, refs, repo_id, url, branch, start,
                                           sparse)
            conflicts: list[str] = []
            merge_parent = None
            if previous_run_id is not None:
                merges = [(remote, f"origin/{branch}"), (base_sha, ref)]
                conflicts, merge_parent = await sync_and_merge(
                    tmp, self.mirrors, mirror, merges, keep_conflicts=self.conflicts == "agent")
                start = await merging.head(tmp)
            workspace = Workspace(
                path=str(final), branch=branch, base_ref=ref, conflicts=conflicts,
                base_sha=start,
            )
            record = Record(
                workspace=workspace, git_files=read_git_files(tmp), repo_id=repo_id,
                url=without_credentials(url), sparse=sparse, created_at=self._clock(),
                previous_run_id=previous_run_id, merge_parent=merge_parent,
            )
            self.records.save(run_id, record)
            tmp.rename(final)
        finally:
            await remove_tree(tmp)
        elapsed = time.monotonic() - started
        git_clone_seconds.labels(kind=kind).observe(elapsed)
        log.info("workspace_created", run_id=run_id, branch=branch, base_sha=workspace.base_sha,
                 kind=kind, seconds=round(elapsed, 3), conflicts=len(conflicts))
        return workspace

    async def _materialise(
        self, dest: Path, mirror: Path, refs: RefSnapshot, repo_id: str, url: str,
        branch: str, sha: str, sparse: list[str],
    ) -> str:
        """Check `sha` out at `dest` on `branch`: a warm entry when one is ready, else a new
        one; return which ("warm", "workspace", "sparse")."""
        await self.mirrors.fetch_blobs(mirror, sha)
        if self.pool is not None:
            self.pool.note_use(repo_id, url)
            # A sparse workspace from a full warm one would delete thousands of files: a new
            # sparse checkout writes only the cone and is already fast.
            if not sparse and self.pool.claim(repo_id, dest):
                try:
                    sync_refs(dest, refs)
                    if detached_at(dest) == sha:  # index and files are that commit already
                        start_branch(dest, branch, sha)
                    else:  # writes only the files that differ
                        await checkout(dest, sha, branch)
                    return "warm"
                except (GitError, OSError) as exc:
                    log.warning("warm_workspace_unusable", error=str(exc))
                    await remove_tree(dest)
        init_gitdir(dest, mirror, url)
        sync_refs(dest, refs)
        if sparse:
            await set_sparse(dest, sparse)
            await checkout(dest, sha, branch)
            return "sparse"
        await checkout_new(dest, sha, branch)
        return "workspace"

    async def _keep(self, path: Path, record: Record, done: CommitRecord) -> None:
        """Keep zloth's commit in the mirror, so follow-ups find it once the workspace is gone."""
        if not record.repo_id:
            return
        mirror = self.mirrors.path_for(record.repo_id)
        try:
            await keep_commit(mirror, path, f"refs/heads/{record.workspace.branch}",
                              done.run_id, done.sha)
        except GitError as exc:  # the workspace still holds it; GC retries before removal
            log.warning("commit_not_kept", run_id=done.run_id, error=str(exc))

    async def ensure_kept(self, run_id: str, record: Record) -> None:
        """Before the workspace goes: its zloth commit must be in the mirror."""
        if record.commit is None or not record.repo_id:
            return
        mirror = self.mirrors.path_for(record.repo_id)
        if not await is_resolvable(mirror, f"{RUNS_NAMESPACE}{run_id}"):
            guard(self.root / run_id, record)
            await self._keep(self.root / run_id, record, record.commit)

    async def _remote_tip(self, record: Record) -> str | None:
        """The upstream branch's sha as the mirror last saw it (the first push's lease)."""
        if not record.repo_id:
            return None
        mirror = self.mirrors.path_for(record.repo_id)
        ref = f"refs/heads/{record.workspace.branch}"
        return await resolve(mirror, ref) if await is_resolvable(mirror, ref) else None

    def _run_id_of(self, path: Path) -> str:
        p = Path(path).absolute()
        if p.parent != self.root or not RUN_ID.fullmatch(p.name):
            raise WorkspaceError(f"{path} is not a workspace under {self.root}")
        return p.name
