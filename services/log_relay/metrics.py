"""log-relay's own Prometheus metrics, registered in the shared registry
(`services.core.metrics.REGISTRY`), so `/metrics` renders them with everything else.

The feed backlog gauge is computed when scraped (a sum over this process's hubs), so the
feeds pay nothing per message for it.
"""

from __future__ import annotations

import weakref
from typing import Protocol

from prometheus_client import Counter, Gauge

from services.core.metrics import REGISTRY


class _Backlogged(Protocol):
    def pending(self) -> int: ...


_hubs: weakref.WeakSet[_Backlogged] = weakref.WeakSet()

archive_bytes = Gauge(
    "zloth_log_archive_bytes", "Compressed bytes of the run logs in the archive (last sweep)",
    registry=REGISTRY,
)
archives = Gauge(
    "zloth_log_archives", "Run logs in the archive (last sweep)", registry=REGISTRY,
)
archive_budget_bytes = Gauge(
    "zloth_log_archive_budget_bytes", "The archive's total size budget (0: unlimited)",
    registry=REGISTRY,
)
archives_removed_total = Counter(
    "zloth_log_archives_removed_total",
    "Archived run logs removed by retention, by reason (age, budget)",
    ["reason"], registry=REGISTRY,
)
archive_removed_bytes_total = Counter(
    "zloth_log_archive_removed_bytes_total",
    "Compressed bytes of archived run logs removed by retention, by reason (age, budget)",
    ["reason"], registry=REGISTRY,
)
feed_pending = Gauge(
    "zloth_log_feed_pending_messages",
    "Messages the shared feeds have yet to read from the stream, as of the last message each"
    " read (sum over feeds; what flow control already let into a reader, <= ~2 MB, is not"
    " counted)",
    registry=REGISTRY,
)
feed_pending.set_function(lambda: float(sum(hub.pending() for hub in list(_hubs))))
feed_restarts_total = Counter(
    "zloth_log_feed_restarts_total",
    "Shared feeds restarted, their sessions ended, for falling too far behind the stream",
    registry=REGISTRY,
)


def track(hub: _Backlogged) -> None:
    """Count `hub`'s feeds in the backlog gauge while it exists."""
    _hubs.add(hub)
