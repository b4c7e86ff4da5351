"""log-relay settings (`ZLOTH_*` variables, `ZLOTH_LOG_RELAY_*` first); the README's
log-relay table explains each."""

from __future__ import annotations

from typing import Annotated

import msgspec

from services.core.config import CommonSettings

NonNegative = msgspec.Meta(ge=0)
Positive = msgspec.Meta(gt=0)


class LogRelaySettings(CommonSettings, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8001  # its own HTTP server when run alone; `zloth up` mounts the routes
    client_queue_chunks: int = 256  # per SSE client; a client this far behind is dropped
    client_write_timeout_seconds: float = 30.0  # a write blocked this long drops the client
    keepalive_seconds: float = 15.0
    # A shared feed this many messages behind the stream ends its clients' sessions (they
    # resume with Last-Event-ID) and restarts; 0: no bound.
    feed_max_pending: Annotated[int, NonNegative] = 1000
    archive: bool = True
    archive_max_bytes: int = 64 << 20  # raw log bytes kept per run; the rest is cut
    history_page_bytes: int = 4 << 20  # a history page stops growing past this many bytes
    # Retention, oldest archived first: by age, then by the total (compressed) size.
    archive_retention_days: Annotated[float, NonNegative] = 30.0  # 0: keep forever
    archive_max_total_bytes: Annotated[int, NonNegative] = 2 << 30  # 0: unlimited
    archive_tombstone_days: Annotated[float, NonNegative] = 365.0  # "expired" answers; 0: forever
    archive_sweep_interval_seconds: Annotated[float, Positive] = 300.0
    archive_sweep_batch: Annotated[int, Positive] = 200  # archives removed per transaction
