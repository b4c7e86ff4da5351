"""The gateway's settings (`ZLOTH_*` variables), loaded once by `__main__`."""

from __future__ import annotations

from services.core.config import CommonSettings


class GatewaySettings(CommonSettings, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8000
    reconcile_seconds: float = 5.0  # outbox sweep period
    redispatch_after_seconds: float = 15.0  # re-publish a StartRun nobody reacted to
    idempotency_ttl_seconds: float = 86_400.0
    default_timeout_seconds: float | None = None  # a run's wall-clock limit when not asked
