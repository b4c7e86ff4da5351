"""Disk budget and garbage collection: finished workspaces, warm ones, leftovers, mirrors.

A finished run's workspace (the scheduler said the run is terminal) stays `keep_seconds`
for inspection and follow-ups, may then be recycled into the warm pool, and is removed
after `retention_seconds`, or earlier, oldest first, while the workspaces on this host
exceed `budget_bytes` (warm entries go after the finished ones; a live run's workspace is
never touched). Before a workspace goes, zloth's commit in it is kept in the mirror.
Leftovers of crashes (`.tmp-*` of a run nobody holds, half-made pool entries) are removed.
Mirrors get `git gc --auto`, pruning nothing while a workspace may borrow their objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog

from services.core import metrics
from services.core.git import GitError, run_git
from services.workspace_manager.fsops import disk_usage, remove_tree, try_host_lock
from services.workspace_manager.mirrors import drop_kept
from services.workspace_manager.records import Record, WorkspaceError
from services.workspace_manager.workspaces import WorkspaceFactory

log = structlog.get_logger(__name__)


class SweepReport(msgspec.Struct, kw_only=True):
    removed: dict[str, int]  # reason -> count
    counts: dict[str, int]  # active / finished / warm
    bytes: int  # after the sweep
    over_budget: bool  # still over the budget (live workspaces alone exceed it)


class Janitor:
    def __init__(
        self,
        factory: WorkspaceFactory,
        *,
        retention_seconds: float = 86_400.0,
        keep_seconds: float = 600.0,
        budget_bytes: int = 0,  # 0: no budget
        record_seconds: float = 30 * 86_400.0,
        orphan_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.factory = factory
        self.root = factory.root
        self.retention_seconds = retention_seconds
        self.keep_seconds = keep_seconds
        self.budget_bytes = budget_bytes
        self.record_seconds = record_seconds
        self.orphan_seconds = orphan_seconds
        self._clock = clock
        self.last: SweepReport | None = None  # for `/v1/status`
        self.mirror_bytes = 0

    async def run(self, stopping: asyncio.Event, every: float, mirrors_every: float) -> None:
        next_maintenance = 0.0
        while not stopping.is_set():
            try:
                await self.sweep()
                if time.monotonic() >= next_maintenance:
                    await self.maintain_mirrors()
                    next_maintenance = time.monotonic() + mirrors_every
            except Exception:  # top of a periodic unit: the next round retries
                log.exception("workspace_gc_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await stopping.wait()

    async def sweep(self) -> SweepReport:
        removed: Counter[str] = Counter()
        now = self._clock()
        await self._orphans(removed, now)
        records = self._records()
        for run_id, rec in records.items():
            ended = rec.finished_at
            expired = ended is not None and now - ended >= self.retention_seconds
            if expired and await self.discard(run_id, "retention") is not None:
                removed["retention"] += 1
        records = self._records()
        sizes = {run_id: rec.size or await self._measure(run_id) for run_id, rec in
                 records.items() if rec.removed_at is None}
        warm = self.factory.pool.entries() if self.factory.pool else []
        total = sum(sizes.values()) + sum(size for _, _, size in warm)
        if self.budget_bytes and total > self.budget_bytes:
            total = await self._enforce_budget(records, sizes, warm, total, removed)
        await self._forget_tombstones(self._records(), now)
        counts = self._counts(self._records(), len(self.factory.pool.entries())
                              if self.factory.pool else 0)
        for state, count in counts.items():
            metrics.workspaces.labels(state).set(count)
        metrics.workspace_bytes.set(total)
        metrics.workspace_budget_bytes.set(self.budget_bytes)
        for reason, count in removed.items():
            metrics.workspace_removed_total.labels(reason).inc(count)
        over = bool(self.budget_bytes) and total > self.budget_bytes
        if removed or over:
            log.info("workspace_gc", removed=dict(removed), bytes=total, over_budget=over)
        await self._measure_mirrors()
        self.last = SweepReport(removed=dict(removed), counts=counts, bytes=total,
                                over_budget=over)
        return self.last

    async def discard(self, run_id: str, reason: str) -> int | None:
        """Remove a finished run's workspace (its commit kept first); bytes freed, or None
        when it is not finished, already gone, busy, or its commit could not be kept."""
        async with self.factory.records.try_lock(run_id) as held:
            rec = self.factory.records.load(run_id) if held else None
            if rec is None or rec.finished_at is None or rec.removed_at is not None:
                return None
            try:
                await self.factory.ensure_kept(run_id, rec)
            except (GitError, WorkspaceError, OSError) as exc:
                log.warning("workspace_not_removed", run_id=run_id, error=str(exc))
                return None
            await remove_tree(self.root / run_id)
            self.factory.records.save(run_id, msgspec.structs.replace(
                rec, removed_at=self._clock()))
            log.info("workspace_removed", run_id=run_id, reason=reason, bytes=rec.size)
            return rec.size

    async def detach_finished(self, repo_id: str, dest: Path) -> bool:
        """Move the oldest finished workspace of `repo_id` kept long enough to `dest` (for
        recycling into the pool); False when there is none."""
        now = self._clock()
        candidates = sorted(
            (rec.finished_at, run_id) for run_id, rec in self._records().items()
            if rec.repo_id == repo_id and rec.removed_at is None and rec.finished_at is not None
            and now - rec.finished_at >= self.keep_seconds
        )
        for _, run_id in candidates:
            async with self.factory.records.try_lock(run_id) as held:
                rec = self.factory.records.load(run_id) if held else None
                if rec is None or rec.removed_at is not None:
                    continue
                if not (self.root / run_id).is_dir():  # removed behind our back
                    self.factory.records.save(run_id, msgspec.structs.replace(
                        rec, removed_at=self._clock()))
                    continue
                try:
                    await self.factory.ensure_kept(run_id, rec)
                    (self.root / run_id).rename(dest)
                except (GitError, WorkspaceError, OSError) as exc:
                    log.warning("workspace_not_recycled", run_id=run_id, error=str(exc))
                    continue
                self.factory.records.save(run_id, msgspec.structs.replace(
                    rec, removed_at=self._clock()))
                metrics.workspace_removed_total.labels("recycled").inc()
                return True
        return False

    async def maintain_mirrors(self) -> None:
        """`gc --auto` each mirror under its lock; unreachable objects are only pruned (after
        git's two weeks) when no workspace of this host borrows from the mirror."""
        mirrors = self.factory.mirrors
        if not mirrors.root.is_dir():
            return
        in_use = {mirrors.path_for(rec.repo_id).name for rec in self._records().values()
                  if rec.removed_at is None and rec.repo_id}
        if self.factory.pool is not None and self.factory.pool.dir.is_dir():
            pooled = {p.name for p in self.factory.pool.dir.iterdir() if p.is_dir()}
            in_use |= {m.name for m in mirrors.root.glob("*.git")
                       if m.name.removesuffix(".git") in pooled}
        for mirror in sorted(mirrors.root.glob("*.git")):
            prune = "never" if mirror.name in in_use else "2.weeks.ago"
            async with mirrors.locked(mirror):
                await run_git(
                    # autoDetach off: gc must finish while the mirror's lock is held.
                    ["-c", "gc.auto=6700", "-c", "gc.autoPackLimit=20", "-c", "gc.autoDetach=false",
                     "-c", f"gc.pruneExpire={prune}", "gc", "--auto", "--quiet"],
                    cwd=mirror, timeout=3600,
                )
        await self._measure_mirrors()

    async def _measure_mirrors(self) -> None:
        self.mirror_bytes = await asyncio.to_thread(disk_usage, self.factory.mirrors.root)
        metrics.mirror_bytes.set(self.mirror_bytes)

    async def _enforce_budget(
        self, records: dict[str, Record], sizes: dict[str, int],
        warm: list[tuple[Path, float, int]], total: int, removed: Counter[str],
    ) -> int:
        finished = sorted((rec.finished_at, run_id) for run_id, rec in records.items()
                          if rec.finished_at is not None and rec.removed_at is None)
        for _, run_id in finished:
            if total <= self.budget_bytes:
                return total
            if await self.discard(run_id, "budget") is not None:
                total -= sizes.get(run_id, 0)
                removed["budget"] += 1
        for entry, _, size in sorted(warm, key=lambda item: item[1]):
            if total <= self.budget_bytes:
                return total
            await remove_tree(entry)
            total -= size
            removed["pool"] += 1
        return total

    async def _orphans(self, removed: Counter[str], now: float) -> None:
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.name.startswith(".tmp-"):
                run_id = entry.name.removeprefix(".tmp-").rsplit("-", 1)[0]
                async with self.factory.records.try_lock(run_id) as free:
                    if free:  # nobody is making it: a crash left it
                        await remove_tree(entry)
                        removed["orphan"] += 1
        trash = self.root / ".trash"
        if trash.is_dir():
            for entry in trash.iterdir():
                await remove_tree(entry)
        pool = self.factory.pool
        if pool is None or not pool.dir.is_dir():
            return
        busy = pool.busy_dirs()
        for entry, created, _ in pool.entries():
            if entry.parent.name not in busy and now - created >= pool.idle_seconds:
                await remove_tree(entry)  # a repository nobody here used for a while
                removed["pool"] += 1
        for repo in pool.dir.iterdir():
            if repo.is_dir():
                with try_host_lock(repo.parent / f"{repo.name}.lock") as free:
                    for entry in repo.glob(".making-*") if free else ():
                        await remove_tree(entry)  # no filler holds the repository: a crash
                        removed["orphan"] += 1

    async def _forget_tombstones(self, records: dict[str, Record], now: float) -> None:
        for run_id, rec in records.items():
            if rec.removed_at is not None and now - rec.removed_at >= self.record_seconds:
                mirror = self.factory.mirrors.path_for(rec.repo_id) if rec.repo_id else None
                if mirror is not None and mirror.is_dir():
                    await drop_kept(mirror, run_id)
                self.factory.records.delete(run_id)

    def _records(self) -> dict[str, Record]:
        found = {}
        for run_id in self.factory.records.run_ids():
            rec = self.factory.records.load(run_id)
            if rec is not None:
                found[run_id] = rec
        return found

    async def _measure(self, run_id: str) -> int:
        return await asyncio.to_thread(disk_usage, self.root / run_id)

    @staticmethod
    def _counts(records: dict[str, Record], warm: int) -> dict[str, int]:
        counts = {"active": 0, "finished": 0, "warm": warm}
        for rec in records.values():
            if rec.removed_at is None:
                counts["finished" if rec.finished_at is not None else "active"] += 1
        return counts

