"""Warm workspaces: a few ready checkouts per busy repository, so that a run's workspace is
a rename plus a checkout of the files that differ, whatever the repository's size.

`<root>/.pool/<repo>/ready-<ms>-<bytes>-<hex>` is a full checkout of the mirror's default
branch at the time, HEAD detached, its `.git` made by zloth and never seen by an agent.
Taking one is `rename()` (atomic: two replicas on one host never take the same). A round
of the filler tops each repository used in the last `idle_seconds` up to `size` entries,
recycling a finished run's workspace when the factory offers one (recycle.py), else
checking out a new one; entries are parked until their index is no longer racy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from services.core import metrics
from services.core.git import GitError
from services.workspace_manager.fsops import disk_usage, remove_tree, try_host_lock
from services.workspace_manager.gitdirs import checkout, init_gitdir
from services.workspace_manager.mirrors import (
    MirrorCache,
    default_branch,
    resolve,
    safe_name,
)
from services.workspace_manager.recycle import RecycleError, recycle, settle, verify_clean
from services.workspace_manager.refs import read_refs

log = structlog.get_logger(__name__)

# (repo_id, destination) -> True when a finished workspace of that repo was moved there.
Detach = Callable[[str, Path], Awaitable[bool]]


class WarmPool:
    def __init__(
        self,
        root: Path,
        mirrors: MirrorCache,
        size: int = 2,
        idle_seconds: float = 3600.0,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dir = root.absolute() / ".pool"
        self.trash = root.absolute() / ".trash"
        self.mirrors = mirrors
        self.size = size
        self.idle_seconds = idle_seconds
        self.wake = asyncio.Event()
        self._clock = clock
        self._busy: dict[str, tuple[str, float]] = {}  # repo_id -> (url, last use)
        self.made = {"fresh": 0, "recycled": 0}

    def repo_dir(self, repo_id: str) -> Path:
        return self.dir / safe_name(repo_id)

    def note_use(self, repo_id: str, url: str) -> None:
        self._busy[repo_id] = (url, self._clock())
        self.wake.set()

    def busy_dirs(self) -> set[str]:
        """Pool directory names of the repositories used here in the last `idle_seconds`."""
        now = self._clock()
        return {safe_name(r) for r, (_, t) in self._busy.items() if now - t < self.idle_seconds}

    def ready(self, repo_id: str) -> list[Path]:
        """Ready entries of `repo_id`, newest first."""
        where = self.repo_dir(repo_id)
        if not where.is_dir():
            return []
        return sorted((p for p in where.iterdir() if p.name.startswith("ready-")), reverse=True)

    def claim(self, repo_id: str, dest: Path) -> bool:
        """Move a ready entry to `dest`; False when there is none."""
        for entry in self.ready(repo_id):
            try:
                entry.rename(dest)
            except FileNotFoundError:
                continue  # another replica took it first
            metrics.workspace_pool_takes_total.labels("hit").inc()
            return True
        if self.size > 0:
            metrics.workspace_pool_takes_total.labels("miss").inc()
        return False

    async def run(self, detach: Detach, stopping: asyncio.Event, every: float = 5.0) -> None:
        """The filler: a round when woken (a workspace taken, a run ended) or every `every` s."""
        while not stopping.is_set():
            await _first_of(self.wake, stopping, every)
            self.wake.clear()
            if stopping.is_set():
                return
            try:
                await self.fill(detach)
            except Exception:  # top of a periodic unit: the next round retries
                log.exception("pool_fill_failed")

    async def fill(self, detach: Detach) -> int:
        """One round: top every busy repository up; return how many entries were added."""
        now = self._clock()
        busy = [(r, url) for r, (url, t) in self._busy.items() if now - t < self.idle_seconds]
        parked: list[tuple[Path, Path]] = []
        # Each repository's lock is held until its entries are published: the janitor takes
        # a `.making-` entry of an unlocked repository for a crash's leftover.
        with contextlib.ExitStack() as held:
            for repo_id, url in busy:
                try:  # the scheduled refresh of a busy repository's mirror
                    await self.mirrors.ensure(repo_id, url, None)
                except (GitError, ValueError) as exc:
                    log.warning("mirror_refresh_failed", repo_id=repo_id, error=str(exc))
                    continue
                where = self.repo_dir(repo_id)
                where.mkdir(parents=True, exist_ok=True)
                if not held.enter_context(try_host_lock(where.parent / f"{where.name}.lock")):
                    continue  # another replica on this host fills this repository
                for _ in range(self.size - len(self.ready(repo_id))):
                    made = await self._make(repo_id, url, where, detach)
                    if made is not None:
                        parked.append((made, where))
            started = self._clock()
            for entry, where in parked:
                await settle(entry, started)
                size = await asyncio.to_thread(disk_usage, entry)
                stamp = f"{int(self._clock() * 1000):014d}-{size}-{secrets.token_hex(3)}"
                entry.rename(where / f"ready-{stamp}")
        return len(parked)

    async def _make(self, repo_id: str, url: str, where: Path, detach: Detach) -> Path | None:
        mirror = await self.mirrors.ensure(repo_id, url, None)
        sha = await resolve(mirror, read_refs(mirror).head or await default_branch(mirror))
        entry = where / f".making-{os.getpid()}-{secrets.token_hex(4)}"
        kind = "recycled" if await detach(repo_id, entry) else "fresh"
        started = time.monotonic()
        try:
            await self.mirrors.fetch_blobs(mirror, sha)
            if kind == "recycled":
                await recycle(entry, mirror, url, sha, self.trash)
            else:
                init_gitdir(entry, mirror, url)
                await checkout(entry, sha, None)
                await verify_clean(entry)
        except (GitError, RecycleError, OSError) as exc:
            log.warning("pool_entry_failed", repo_id=repo_id, kind=kind, error=str(exc))
            await remove_tree(entry)
            return None
        self.made[kind] += 1
        metrics.git_clone_seconds.labels(kind=f"pool-{kind}").observe(time.monotonic() - started)
        log.info("pool_entry_made", repo_id=repo_id, kind=kind, sha=sha,
                 seconds=round(time.monotonic() - started, 3))
        return entry

    def entries(self) -> list[tuple[Path, float, int]]:
        """Every ready entry on this host as (path, created at, bytes)."""
        found = []
        if self.dir.is_dir():
            for repo in self.dir.iterdir():
                if not repo.is_dir():
                    continue
                for entry in repo.iterdir():
                    parts = entry.name.split("-")
                    if parts[0] == "ready" and len(parts) == 4:
                        found.append((entry, int(parts[1]) / 1000, int(parts[2])))
        return found


async def _first_of(a: asyncio.Event, b: asyncio.Event, seconds: float) -> None:
    """Wait until `a` or `b` is set, at most `seconds`."""
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
