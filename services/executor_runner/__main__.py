"""`python -m services.executor_runner`: an executor-runner on its own."""

from __future__ import annotations

import sys

from services.core.entry import serve_main
from services.executor_runner.service import unit
from services.executor_runner.settings import RunnerSettings


def main(argv: list[str] | None = None) -> int:
    return serve_main("executor-runner", RunnerSettings, unit, lambda s: s.metrics_port, argv)


if __name__ == "__main__":
    sys.exit(main())
