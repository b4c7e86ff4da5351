"""Scheduler settings (`ZLOTH_*` variables)."""

from __future__ import annotations

import msgspec

from services.core.config import CommonSettings


class SchedulerSettings(CommonSettings, frozen=True, kw_only=True):
    metrics_port: int = 9101  # /metrics and /healthz when run alone; 0 turns them off
    max_attempts: int = 3
    retry_backoff_seconds: list[float] = msgspec.field(default_factory=lambda: [2.0, 10.0, 30.0])
    tick_seconds: float = 0.5
    reconcile_seconds: float = 5.0
    stall_seconds: float = 30.0
    # a running attempt with no result this long after the runner's own time limit fails
    overdue_grace_seconds: float = 600.0
    # a follow-up pinned to its previous run's host that no workspace-manager there has
    # taken this long is re-issued to any host (without resuming the agent's session)
    pin_wait_seconds: float = 300.0
    branch_prefix: str = "zloth"
