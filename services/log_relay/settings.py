"""log-relay settings (`ZLOTH_*` variables)."""

from __future__ import annotations

from services.core.config import CommonSettings


class LogRelaySettings(CommonSettings, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8001  # its own HTTP server when run alone; `zloth up` mounts the routes
    client_queue_chunks: int = 256  # per SSE client; a client this far behind is dropped
    client_write_timeout_seconds: float = 30.0  # a write blocked this long drops the client
    keepalive_seconds: float = 15.0
    archive: bool = True
    archive_max_bytes: int = 64 << 20  # raw log bytes kept per run; the rest is cut
    history_page_bytes: int = 4 << 20  # a history page stops growing past this many bytes
