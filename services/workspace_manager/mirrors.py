"""Bare mirrors of upstream repositories (`<root>/<name>.git`), shared by every workspace on a host.

One clone or fetch at a time per mirror: an asyncio.Lock in this process plus an flock on
`<root>/<name>.lock` across processes (several replicas on one host); callers that waited
reuse the fetch that just finished. Only branches and tags are mirrored (`refs/pull/*` can
be larger than the repository); `refs/zloth/runs/<run_id>` keeps each run's commit so a
follow-up finds it after the run's workspace is gone. A mirror may be a partial clone
(`--filter=blob:none`): the blobs a workspace needs are fetched into it before checkout.
Credentials are passed per command (credentials.py), never stored in the mirror's config.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import structlog

from services.core.git import GitError, run_git
from services.core.metrics import git_clone_bytes, git_clone_seconds
from services.workspace_manager.credentials import auth_env, without_credentials
from services.workspace_manager.fsops import disk_usage, host_lock, remove_tree

log = structlog.get_logger(__name__)

# Written into a mirror after each successful clone or fetch: its content is the clock's
# reading then, so freshness is shared by every process using the mirror.
STAMP_FILE = "zloth-fetched"
_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
RUNS_NAMESPACE = "refs/zloth/runs/"
# An agent's `git push /path/to/mirror` runs this (zloth's own git never pushes into it).
_PRE_RECEIVE = b"#!/bin/sh\necho 'zloth: this mirror is read-only' >&2\nexit 1\n"


class UnknownRefError(LookupError):
    """The ref does not name a commit in the mirror, even after a fetch."""


class MirrorCache:
    """Clones a mirror on first use and refreshes it when stale or missing a wanted ref.

    `clones` and `fetches` count what this instance ran (tests and logs read them).
    """

    def __init__(
        self,
        root: Path,
        refresh_seconds: float = 30.0,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 1800.0,
        blob_filter: str = "",
        tokens: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root.absolute()
        self.refresh_seconds = refresh_seconds
        self.clones = 0
        self.fetches = 0
        self._clock = clock
        self._timeout = timeout
        self._filter = blob_filter
        self._tokens = dict(tokens or {})
        self._locks: dict[str, asyncio.Lock] = {}
        self._urls: dict[str, str] = {}  # mirror name -> URL as given (credentials included)

    def path_for(self, repo_id: str) -> Path:
        return self.root / f"{safe_name(repo_id)}.git"

    async def ensure(self, repo_id: str, url: str, want_ref: str | None) -> Path:
        """Return the mirror of `url`, cloned or fetched so that `want_ref` resolves if it can."""
        if url.startswith("-"):
            raise ValueError(f"not a repository URL: {url!r}")
        mirror = self.path_for(repo_id)
        self._urls[mirror.name] = url
        if await self._usable(mirror, want_ref):
            return mirror
        waited_since = self._clock()
        async with self.locked(mirror):
            # Whoever held the lock before us may have just fetched: reuse that fetch.
            if self._stamp(mirror) >= waited_since or await self._usable(mirror, want_ref):
                return mirror
            if mirror.is_dir():
                await self._fetch(mirror, want_ref)
            else:
                await self._clone(mirror, url)
        return mirror

    @contextlib.asynccontextmanager
    async def locked(self, mirror: Path) -> AsyncIterator[None]:
        """Hold the mirror's lock (fetches, maintenance) in this process and on this host."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self._locks.setdefault(mirror.name, asyncio.Lock())
        async with lock, host_lock(mirror.with_suffix(".lock")):
            yield

    def env_for(self, mirror: Path) -> dict[str, str]:
        """Credentials for upstream of `mirror`, as the last URL given for it carries them."""
        url = self._urls.get(mirror.name) or _configured_url(mirror)
        return auth_env(url, self._tokens)

    def partial(self, mirror: Path) -> bool:
        return _is_partial(mirror)

    async def fetch_blobs(self, mirror: Path, sha: str) -> None:
        """In a partial mirror, fetch the blobs of `sha`'s tree it lacks (one request).

        Git inside a workspace cannot fetch a missing blob itself (the workspace is no
        promisor): commands that reach into older history (`log -p`, `blame`) see missing
        objects there. Partial mirrors are for repositories whose history is too large.
        """
        if not _is_partial(mirror):
            return
        listed = await run_git(
            ["rev-list", "--objects", "--no-object-names", "--missing=print", f"{sha}^{{tree}}"],
            cwd=mirror, env={"GIT_NO_LAZY_FETCH": "1"}, timeout=self._timeout,
        )
        missing = [line[1:] for line in listed.stdout.splitlines() if line.startswith("?")]
        if not missing:
            return
        await run_git(
            ["-c", "fetch.negotiationAlgorithm=noop", "fetch", "--no-tags",
             "--no-write-fetch-head", "--quiet", f"--filter={self._filter or 'blob:none'}",
             "--stdin", "origin"],
            cwd=mirror, env=self.env_for(mirror), input="".join(f"{m}\n" for m in missing).encode(),
            timeout=self._timeout,
        )

    async def _usable(self, mirror: Path, want_ref: str | None) -> bool:
        if self._clock() - self._stamp(mirror) >= self.refresh_seconds:
            return False
        return want_ref is None or await is_resolvable(mirror, want_ref)

    def _stamp(self, mirror: Path) -> float:
        try:
            return float((mirror / STAMP_FILE).read_text())
        except (OSError, ValueError):  # no mirror yet, or a torn write: treat as never fetched
            return float("-inf")

    def _write_stamp(self, mirror: Path) -> None:
        tmp = mirror / f"{STAMP_FILE}.{secrets.token_hex(4)}"
        tmp.write_text(repr(self._clock()))
        tmp.replace(mirror / STAMP_FILE)

    async def _clone(self, mirror: Path, url: str) -> None:
        # Cloned under a temporary name and renamed: the final name only ever holds a whole mirror.
        tmp = self.root / f".{mirror.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        started = time.monotonic()
        try:
            # Workspaces borrow this mirror's objects (clone --shared): git must never prune
            # objects a workspace may still need, so automatic gc is off; repacking a mirror
            # is the GC's job, with --keep-unreachable or once no workspace uses it.
            await run_git(
                [
                    "clone",
                    "--bare",
                    "--quiet",
                    "--template=",
                    *([f"--filter={self._filter}"] if self._filter else []),
                    "-c",
                    "gc.auto=0",
                    "-c",
                    "maintenance.auto=false",
                    "--",
                    without_credentials(url),
                    str(tmp),
                ],
                env=auth_env(url, self._tokens),
                timeout=self._timeout,
            )
            (tmp / "hooks").mkdir(exist_ok=True)
            (tmp / "hooks" / "pre-receive").write_bytes(_PRE_RECEIVE)
            (tmp / "hooks" / "pre-receive").chmod(0o755)
            self._write_stamp(tmp)
            size = await asyncio.to_thread(disk_usage, tmp)
            tmp.rename(mirror)
        finally:
            await remove_tree(tmp)
        self.clones += 1
        elapsed = time.monotonic() - started
        git_clone_seconds.labels(kind="mirror").observe(elapsed)
        git_clone_bytes.labels(kind="mirror").observe(size)
        log.info("mirror_cloned", mirror=str(mirror), seconds=round(elapsed, 3), bytes=size)

    async def _fetch(self, mirror: Path, want_ref: str | None) -> None:
        started = time.monotonic()
        before = await asyncio.to_thread(disk_usage, mirror / "objects")
        try:
            # Explicit refspecs: --prune then only touches branches and tags, never the
            # refs/zloth/ namespace (and refs/pull/* is never fetched).
            await run_git(
                ["fetch", "--prune", "--quiet", "--no-write-fetch-head", "origin", *_REFSPECS],
                cwd=mirror, env=self.env_for(mirror), timeout=self._timeout,
            )
        except GitError as exc:
            if want_ref is not None and not await is_resolvable(mirror, want_ref):
                raise
            # Only stale, not missing what the caller wants: an upstream outage should not
            # fail every run. The stamp stays old, so the next caller tries again.
            log.warning("mirror_fetch_failed", mirror=str(mirror), error=str(exc))
            return
        self._write_stamp(mirror)
        self.fetches += 1
        grown = max(0, await asyncio.to_thread(disk_usage, mirror / "objects") - before)
        elapsed = time.monotonic() - started
        git_clone_seconds.labels(kind="mirror").observe(elapsed)
        git_clone_bytes.labels(kind="mirror").observe(grown)
        log.info("mirror_fetched", mirror=str(mirror), seconds=round(elapsed, 3), bytes=grown)


async def keep_commit(mirror: Path, source: Path, ref: str, run_id: str, sha: str) -> None:
    """Copy `ref` (at `sha`) of the workspace `source` into the mirror as the run's ref.

    Only the objects the mirror lacks travel (the agent's blobs, zloth's commit); the
    objects are checked on the way in, since they come from where an agent worked.
    """
    await run_git(
        ["-c", "fetch.fsckObjects=true", "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
         str(source.absolute()), f"+{ref}:{RUNS_NAMESPACE}{run_id}"],
        cwd=mirror,
    )
    kept = await resolve(mirror, f"{RUNS_NAMESPACE}{run_id}")
    if kept != sha:  # the branch moved under us: drop what is not zloth's commit
        await run_git(["update-ref", "-d", f"{RUNS_NAMESPACE}{run_id}"], cwd=mirror)
        raise GitError(["fetch"], 1, f"{ref} is at {kept}, not zloth's commit {sha}")


async def drop_kept(mirror: Path, run_id: str) -> None:
    await run_git(["update-ref", "-d", f"{RUNS_NAMESPACE}{run_id}"], cwd=mirror, check=False)


async def default_branch(mirror: Path) -> str:
    """The branch the mirror's HEAD names (upstream's default branch when it was cloned)."""
    result = await run_git(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd=mirror)
    return result.stdout.strip()


async def resolve(mirror: Path, ref: str) -> str:
    """The commit sha `ref` (branch, tag or sha) names in the mirror."""
    _check_ref(ref)
    result = await run_git(
        ["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=mirror, check=False
    )
    if result.code != 0:
        raise UnknownRefError(f"{ref!r} does not name a commit in {mirror.name}")
    return result.stdout.strip()


async def is_resolvable(mirror: Path, ref: str) -> bool:
    try:
        await resolve(mirror, ref)
    except UnknownRefError:
        return False
    return True


def _check_ref(ref: str) -> None:
    # rev-parse would read a leading dash as an option; NUL / newline are never in a ref.
    if not ref or ref.startswith("-") or any(c in ref for c in "\0\n\r"):
        raise UnknownRefError(f"not a ref: {ref!r}")


def _is_partial(mirror: Path) -> bool:
    """The mirror is a partial clone (read from its config: this is asked per workspace)."""
    try:
        text = (mirror / "config").read_text()
    except OSError:
        return False
    return re.search(r"^\s*promisor\s*=\s*true\s*$", text, re.MULTILINE | re.IGNORECASE) is not None


def _configured_url(mirror: Path) -> str:
    try:
        text = (mirror / "config").read_text()
    except OSError:
        return ""
    found = re.search(r"^\s*url\s*=\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip().strip('"') if found else ""


def safe_name(repo_id: str) -> str:
    """A file name for `repo_id`; the hash keeps `a/b` and `a_b` apart."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", repo_id).strip("._-")[:64] or "repo"
    return f"{slug}-{hashlib.sha256(repo_id.encode()).hexdigest()[:10]}"
