"""Per-run workspaces made from a mirror without copying objects, and zloth's commit of a run.

`<root>/<run_id>` is a `clone --shared` of the mirror on the run's branch. What zloth does not
trust the agent with lives in `<root>/.zloth/`: each workspace's record, the `.git` files it
was made with (put back before every zloth git call there, so the agent's `.git/config` never
counts) and a lock. Errors: ValueError / UnknownRefError (bad input), WorkspaceError, GitError.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec
import structlog

from schemas.runs import FileChange
from services.core.metrics import git_clone_bytes, git_clone_seconds
from services.core.git import GitError, run_git
from services.workspace_manager.mirrors import (
    MirrorCache,
    default_branch,
    disk_usage,
    host_lock,
    remove_tree,
    resolve,
)

log = structlog.get_logger(__name__)

TRAILER = "Zloth-Run"
# Basenames an agent must never commit (secrets); matched case-insensitively.
REJECTED_NAMES = (".env", ".env.*", "*.pem", "*.key", "id_rsa*", ".npmrc", ".netrc")

# .git files (relative to .git) put back from zloth's copy before each zloth git call.
_TRUSTED_GIT_FILES = (
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

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_DIFF_OPTS = ("--no-ext-diff", "--no-textconv", "--no-renames", "--no-color")


class Workspace(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    branch: str
    base_sha: str
    base_ref: str  # what base_sha was resolved from (the default branch when none was asked)


class CommitResult(msgspec.Struct, frozen=True, kw_only=True):
    commit_sha: str | None  # None: nothing to commit
    files_changed: list[FileChange] = []
    diff: str = ""
    diff_truncated: bool = False
    rejected_paths: list[str] = []


class WorkspaceError(Exception):
    """The workspace cannot be used: not made by this factory, or its .git was tampered with."""


class _CommitRecord(msgspec.Struct, frozen=True, kw_only=True):
    sha: str
    base_sha: str
    run_id: str
    rejected_paths: list[str]


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    workspace: Workspace
    git_files: dict[str, bytes | None]
    commit: _CommitRecord | None = None  # zloth's commit, so a redelivered command reuses it


class WorkspaceFactory:
    """Makes, resets and commits the workspaces under `root` (one per run)."""

    def __init__(self, mirrors: MirrorCache, root: Path) -> None:
        self.mirrors = mirrors
        self.root = root.absolute()
        self._records = self.root / ".zloth"

    async def create(
        self,
        run_id: str,
        repo_id: str,
        url: str,
        base_ref: str | None,
        branch: str,
        sparse_paths: Sequence[str] = (),
    ) -> Workspace:
        """Make `<root>/<run_id>` on a new `branch` at `base_ref`; return it if already made."""
        _check_run_id(run_id)
        await _check_branch(branch)
        sparse = _normalise_sparse(sparse_paths)
        self._records.mkdir(parents=True, exist_ok=True)
        async with host_lock(self._records / f"{run_id}.lock"):
            found = await self._existing(run_id, branch)
            if found is not None:
                return found
            # Broken, half-made by a crashed older version, or on another branch: start over.
            await remove_tree(self.root / run_id)
            return await self._make(run_id, repo_id, url, base_ref, branch, sparse)

    async def reset(self, path: Path, base_sha: str) -> None:
        """Discard everything the agent did: the run's branch back at `base_sha`, tree clean."""
        _check_sha(base_sha)
        run_id = self._run_id_of(path)
        async with host_lock(self._records / f"{run_id}.lock"):
            record = self._require(run_id)
            await self._guard(path, record)
            # -B re-attaches the run's branch whatever the agent checked out; -f drops edits.
            await run_git(
                ["checkout", "--quiet", "--force", "-B", record.workspace.branch, base_sha],
                cwd=path,
            )
            await run_git(["clean", "-ffdxq"], cwd=path)
            if record.commit is not None:
                self._save(run_id, msgspec.structs.replace(record, commit=None))

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
        _check_sha(base_sha)
        _check_run_id(run_id)
        summary = _check_relative(summary_file)
        ws_run = self._run_id_of(path)
        async with host_lock(self._records / f"{ws_run}.lock"):
            record = self._require(ws_run)
            await self._guard(path, record)
            branch_ref = f"refs/heads/{record.workspace.branch}"
            done = await _recorded_commit(path, record.commit, branch_ref, base_sha, run_id)
            if done is None:
                sha, rejected = await _commit_worktree(
                    path, branch_ref, base_sha, message, run_id, summary
                )
                if sha is None:
                    return CommitResult(commit_sha=None, rejected_paths=rejected)
                done = _CommitRecord(
                    sha=sha, base_sha=base_sha, run_id=run_id, rejected_paths=rejected
                )
                self._save(ws_run, msgspec.structs.replace(record, commit=done))
            return await _describe(path, base_sha, done, max_diff_bytes)

    async def _existing(self, run_id: str, branch: str) -> Workspace | None:
        record = self._load(run_id)
        path = self.root / run_id
        if record is None or record.workspace.branch != branch or not path.is_dir():
            return None
        try:
            await self._guard(path, record)
            head = await run_git(["symbolic-ref", "--quiet", "HEAD"], cwd=path, check=False)
            commit = await run_git(
                ["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], cwd=path, check=False
            )
        except (WorkspaceError, GitError):
            return None
        if head.stdout.strip() != f"refs/heads/{branch}" or commit.code != 0:
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
    ) -> Workspace:
        mirror = await self.mirrors.ensure(repo_id, url, base_ref)
        ref = base_ref or await default_branch(mirror)
        base_sha = await resolve(mirror, ref)
        final = self.root / run_id
        # Made under a temporary name and renamed: a crash never leaves a half-made workspace
        # under the final name.
        tmp = self.root / f".tmp-{run_id}-{secrets.token_hex(4)}"
        started = time.monotonic()
        try:
            await _clone_shared(mirror, tmp, url, branch, base_sha, sparse)
            size = await asyncio.to_thread(disk_usage, tmp)
            workspace = Workspace(path=str(final), branch=branch, base_sha=base_sha, base_ref=ref)
            self._save(run_id, _Record(workspace=workspace, git_files=_read_git_files(tmp)))
            tmp.rename(final)
        finally:
            await remove_tree(tmp)
        elapsed = time.monotonic() - started
        git_clone_seconds.labels(kind="workspace").observe(elapsed)
        git_clone_bytes.labels(kind="workspace").observe(size)
        log.info(
            "workspace_created",
            run_id=run_id,
            branch=branch,
            base_sha=base_sha,
            seconds=round(elapsed, 3),
            bytes=size,
        )
        return workspace

    async def _guard(self, path: Path, record: _Record) -> None:
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

    def _run_id_of(self, path: Path) -> str:
        p = Path(path).absolute()
        if p.parent != self.root or not _RUN_ID.fullmatch(p.name):
            raise WorkspaceError(f"{path} is not a workspace under {self.root}")
        return p.name

    def _load(self, run_id: str) -> _Record | None:
        try:
            return msgspec.json.decode(
                (self._records / f"{run_id}.json").read_bytes(), type=_Record
            )
        except (OSError, msgspec.DecodeError):
            return None

    def _require(self, run_id: str) -> _Record:
        record = self._load(run_id)
        if record is None:
            raise WorkspaceError(f"no workspace record for run {run_id}")
        return record

    def _save(self, run_id: str, record: _Record) -> None:
        tmp = self._records / f".{run_id}.json.{secrets.token_hex(4)}"
        tmp.write_bytes(msgspec.json.encode(record))
        tmp.replace(self._records / f"{run_id}.json")


async def _clone_shared(
    mirror: Path, dest: Path, url: str, branch: str, base_sha: str, sparse: list[str]
) -> None:
    # --shared: the workspace borrows the mirror's objects through alternates (nothing is
    # copied); CONVENTIONS.md: concurrent `worktree add` on one mirror fails, this does not.
    await run_git(["clone", "--shared", "--no-checkout", "--quiet", "--", str(mirror), str(dest)])
    # The agent's own fetch/push should reach upstream, not this host's mirror; credentials
    # in the URL stay with zloth.
    await run_git(["config", "remote.origin.url", _without_credentials(url)], cwd=dest)
    if sparse:
        await run_git(
            ["sparse-checkout", "set", "--cone", "--stdin"],
            cwd=dest,
            input="".join(f"{p}\n" for p in sparse).encode(),
        )
    await run_git(["checkout", "--quiet", "-B", branch, base_sha], cwd=dest)


async def _recorded_commit(
    path: Path, done: _CommitRecord | None, branch_ref: str, base_sha: str, run_id: str
) -> _CommitRecord | None:
    """zloth's earlier commit for this run if it is still the branch head, else None.

    The record lives outside the workspace: a commit the agent made with a forged trailer
    (and a committed `.env`) is never taken for zloth's.
    """
    if done is None or done.base_sha != base_sha or done.run_id != run_id:
        return None
    head = await run_git(["rev-parse", "--verify", "--quiet", branch_ref], cwd=path, check=False)
    if head.stdout.strip() != done.sha:
        return None
    fmt = f"--format=%P%n%(trailers:key={TRAILER},valueonly)"
    shown = await run_git(["show", "--no-patch", fmt, done.sha], cwd=path)
    lines = shown.stdout.splitlines()
    if not lines or lines[0].split() != [base_sha] or run_id not in lines[1:]:
        return None
    return done


async def _commit_worktree(
    path: Path, branch_ref: str, base_sha: str, message: str, run_id: str, summary: str
) -> tuple[str | None, list[str]]:
    summary_path = path / summary
    if summary_path.is_symlink() or summary_path.is_file():
        summary_path.unlink()
    # Agents should not commit, but some do, some switch branches: whatever they left, the
    # result is the worktree on top of base_sha as one commit on the run's branch.
    await run_git(["symbolic-ref", "HEAD", branch_ref], cwd=path)
    await run_git(["update-ref", branch_ref, base_sha], cwd=path)
    # --sparse: files the agent made outside a sparse cone count too (without it git refuses).
    await run_git(["add", "--all", "--sparse"], cwd=path)
    rejected = await _unstage_rejected(path, base_sha, summary)
    tree = (await run_git(["write-tree"], cwd=path)).stdout.strip()
    base_tree = (await run_git(["rev-parse", f"{base_sha}^{{tree}}"], cwd=path)).stdout.strip()
    if tree == base_tree:
        return None, rejected
    body = f"{message.strip() or f'zloth run {run_id}'}\n\n{TRAILER}: {run_id}\n"
    # Plumbing, not `git commit`: no hook, template, editor or signing can come into play.
    made = await run_git(
        ["commit-tree", tree, "-p", base_sha, "-F", "-"], cwd=path, input=body.encode()
    )
    sha = made.stdout.strip()
    await run_git(["update-ref", "-m", f"zloth: run {run_id}", branch_ref, sha, base_sha], cwd=path)
    return sha, rejected


async def _unstage_rejected(path: Path, base_sha: str, summary: str) -> list[str]:
    """Put back the base version (or nothing) in the index for paths that must not be committed."""
    raw = await run_git(
        ["diff", "--cached", "--raw", "-z", "--no-abbrev", *_DIFF_OPTS, base_sha], cwd=path
    )
    changes = _parse_raw(raw.stdout)
    rejected = sorted(p for old, new, p in changes if _is_rejected(p, old, new))
    to_reset = rejected + [p for _, _, p in changes if p == summary]
    if to_reset:
        await run_git(
            ["reset", "--quiet", base_sha, "--pathspec-from-file=-", "--pathspec-file-nul"],
            cwd=path,
            env={"GIT_LITERAL_PATHSPECS": "1"},  # a file named `*.pem` is not a glob
            input=b"\0".join(os.fsencode(p) for p in to_reset),
        )
    return [_display(p) for p in rejected]


async def _describe(
    path: Path, base_sha: str, done: _CommitRecord, max_diff_bytes: int
) -> CommitResult:
    span = [base_sha, done.sha, "--"]
    numstat = await run_git(["diff", "--numstat", "-z", *_DIFF_OPTS, *span], cwd=path)
    names = await run_git(["diff", "--name-status", "-z", *_DIFF_OPTS, *span], cwd=path)
    patch = await run_git(["diff", *_DIFF_OPTS, *span], cwd=path, max_stdout=max_diff_bytes)
    raw = patch.stdout.encode("utf-8", "surrogateescape")
    if patch.truncated and b"\n" in raw:
        raw = raw[: raw.rindex(b"\n") + 1]  # whole lines only
    return CommitResult(
        commit_sha=done.sha,
        files_changed=_file_changes(numstat.stdout, names.stdout),
        diff=raw.decode("utf-8", "replace"),
        diff_truncated=patch.truncated,
        rejected_paths=done.rejected_paths,
    )


def _file_changes(numstat: str, name_status: str) -> list[FileChange]:
    counts: dict[str, tuple[int, int]] = {}
    for record in filter(None, numstat.split("\0")):
        added, removed, name = record.split("\t", 2)
        # Binary files show "-": they count as no lines.
        counts[name] = (int(added) if added != "-" else 0, int(removed) if removed != "-" else 0)
    fields = name_status.split("\0")
    return [
        FileChange(
            path=_display(name),
            added=counts.get(name, (0, 0))[0],
            removed=counts.get(name, (0, 0))[1],
            status=status,
        )
        for status, name in zip(fields[0:-1:2], fields[1::2], strict=True)
    ]


def _parse_raw(out: str) -> list[tuple[str, str, str]]:
    """(old mode, new mode, path) from `git diff --raw -z --no-renames`."""
    fields = out.split("\0")
    return [
        (head[1:].split()[0], head[1:].split()[1], name)
        for head, name in zip(fields[0:-1:2], fields[1::2], strict=True)
    ]


def _is_rejected(path: str, old_mode: str, new_mode: str) -> bool:
    parts = path.split("/")
    name = parts[-1].lower()
    return (
        ".git" in parts
        or any(fnmatch.fnmatchcase(name, pattern) for pattern in REJECTED_NAMES)
        # A new gitlink is a repository the agent cloned inside the workspace.
        or (new_mode == "160000" and old_mode != "160000")
    )


def _read_git_files(workspace: Path) -> dict[str, bytes | None]:
    files: dict[str, bytes | None] = {}
    for rel in _TRUSTED_GIT_FILES:
        target = workspace / ".git" / rel
        files[rel] = target.read_bytes() if target.is_file() else None
    return files


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


async def _check_branch(branch: str) -> None:
    ok = (
        not branch.startswith("-")
        and (await run_git(["check-ref-format", f"refs/heads/{branch}"], check=False)).code == 0
    )
    if not ok:
        raise ValueError(f"not a valid branch name: {branch!r}")


def _check_run_id(run_id: str) -> None:
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id must match {_RUN_ID.pattern}: {run_id!r}")


def _check_sha(sha: str) -> None:
    if not _SHA.fullmatch(sha):
        raise ValueError(f"not a full commit sha: {sha!r}")


def _check_relative(raw: str) -> str:
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


def _normalise_sparse(paths: Sequence[str]) -> list[str]:
    if isinstance(paths, str):  # a bare string would be read as one path per character
        raise TypeError("sparse_paths must be a list of paths")
    return sorted({_check_relative(p) for p in paths})


def _without_credentials(url: str) -> str:
    if "://" not in url:
        return url  # a local path or scp-like `git@host:repo`, which holds no secret
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _display(path: str) -> str:
    """A path git printed, made valid UTF-8 for events (undecodable bytes become U+FFFD)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
