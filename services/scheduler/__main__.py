"""`python -m services.scheduler`: the scheduler on its own."""

from __future__ import annotations

import sys

from services.core.entry import serve_main
from services.scheduler.service import unit
from services.scheduler.settings import SchedulerSettings


def main(argv: list[str] | None = None) -> int:
    return serve_main("scheduler", SchedulerSettings, unit, lambda s: s.metrics_port, argv)


if __name__ == "__main__":
    sys.exit(main())
