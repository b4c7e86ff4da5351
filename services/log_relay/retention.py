"""Archive retention: a periodic sweep removes archived run logs older than the maximum
age, then the oldest archived while the archive's compressed total exceeds its budget,
a bounded batch per transaction (archiving goes on between batches). Each removed run
leaves a tombstone (history answers 410 once the stream has dropped it too); tombstones
are forgotten after `tombstone_seconds`. One log line per sweep that removed anything.

The SQLite file does not shrink: freed pages are reused by later archives, so it stays
near the budget instead of growing without end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec

from services.core.runtime import sleep_or_stop
from services.core.telemetry import get_logger
from services.log_relay import metrics
from services.log_relay.store import ArchiveStore, Expired

DAY_SECONDS = 86_400.0


class RetentionPolicy(msgspec.Struct, frozen=True, kw_only=True):
    max_age_seconds: float = 30 * DAY_SECONDS  # 0: keep forever
    max_total_bytes: int = 2 << 30  # compressed; 0: unlimited
    tombstone_seconds: float = 365 * DAY_SECONDS  # 0: keep forever
    batch: int = 200


class SweepReport(msgspec.Struct, kw_only=True):
    removed_age: int = 0
    removed_budget: int = 0
    removed_bytes: int = 0  # compressed
    tombstones_forgotten: int = 0
    archives: int = 0  # left after the sweep
    bytes: int = 0  # compressed, left after the sweep
    over_budget: bool = False


class ArchiveJanitor:
    def __init__(
        self, store: ArchiveStore, policy: RetentionPolicy,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self.policy = policy
        self._now = now
        self.last: SweepReport | None = None
        self._log = get_logger(service="log-relay", component="retention")

    async def run(self, stopping: asyncio.Event, every: float) -> None:
        while not stopping.is_set():
            try:
                await self.sweep(stopping)
            except Exception:  # noqa: BLE001  top of a periodic unit: the next sweep retries
                self._log.exception("archive_sweep_failed")
            await sleep_or_stop(stopping, every)

    async def sweep(self, stopping: asyncio.Event | None = None) -> SweepReport:
        """One pass; between batches it gives up early once `stopping` is set."""
        now, policy, report = self._now(), self.policy, SweepReport()

        def go_on() -> bool:
            return stopping is None or not stopping.is_set()

        if policy.max_age_seconds > 0:
            cutoff = now - timedelta(seconds=policy.max_age_seconds)
            while go_on() and (batch := await self._store.expire_older(cutoff, now,
                                                                        policy.batch)):
                self._count(report, batch, "age")
        totals = await self._store.totals()
        while policy.max_total_bytes and totals.bytes > policy.max_total_bytes and go_on():
            batch = await self._store.expire_oldest(totals.bytes - policy.max_total_bytes,
                                                    now, policy.batch)
            if not batch:
                break
            self._count(report, batch, "budget")
            totals = await self._store.totals()
        if policy.tombstone_seconds > 0:
            cutoff = now - timedelta(seconds=policy.tombstone_seconds)
            while go_on() and (forgotten := await self._store.forget_expired(cutoff,
                                                                             policy.batch)):
                report.tombstones_forgotten += forgotten
        report.archives, report.bytes = totals.archives, totals.bytes
        report.over_budget = bool(policy.max_total_bytes) and totals.bytes > policy.max_total_bytes
        metrics.archives.set(totals.archives)
        metrics.archive_bytes.set(totals.bytes)
        metrics.archive_budget_bytes.set(policy.max_total_bytes)
        removed = report.removed_age + report.removed_budget
        log = self._log.info if removed or report.tombstones_forgotten else self._log.debug
        log("archive_swept", **msgspec.structs.asdict(report),
            max_age_days=policy.max_age_seconds / DAY_SECONDS,
            max_total_bytes=policy.max_total_bytes)
        self.last = report
        return report

    def _count(self, report: SweepReport, batch: list[Expired], reason: str) -> None:
        freed = sum(gone.compressed_bytes for gone in batch)
        if reason == "age":
            report.removed_age += len(batch)
        else:
            report.removed_budget += len(batch)
        report.removed_bytes += freed
        metrics.archives_removed_total.labels(reason).inc(len(batch))
        metrics.archive_removed_bytes_total.labels(reason).inc(freed)
