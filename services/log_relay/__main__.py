"""`python -m services.log_relay`: log-relay on its own HTTP server (`--check` verifies
settings, NATS, streams and the store, then exits)."""

from __future__ import annotations

import sys

from services.core.entry import serve_main
from services.log_relay import NAME
from services.log_relay.service import unit
from services.log_relay.settings import LogRelaySettings


def main(argv: list[str] | None = None) -> int:
    return serve_main(NAME, LogRelaySettings, unit, lambda s: s.port, argv,
                      http_host=lambda s: s.host)


if __name__ == "__main__":
    sys.exit(main())
