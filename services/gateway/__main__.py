"""`python -m services.gateway`: the gateway on its own HTTP server (`--check` verifies
settings, NATS, streams and the store, then exits 0 / 1; an empty ZLOTH_NATS_URL is a
configuration error)."""

from __future__ import annotations

import sys

from services.core.entry import serve_main
from services.gateway import NAME
from services.gateway.service import unit
from services.gateway.settings import GatewaySettings


def main(argv: list[str] | None = None) -> int:
    return serve_main(NAME, GatewaySettings, unit, lambda s: s.port, argv,
                      http_host=lambda s: s.host)


if __name__ == "__main__":
    sys.exit(main())
