"""`python -m services.workspace_manager`: the workspace-manager on its own."""

from __future__ import annotations

import sys

from services.core.entry import serve_main
from services.workspace_manager.service import unit
from services.workspace_manager.settings import WorkspaceSettings


def main(argv: list[str] | None = None) -> int:
    return serve_main("workspace-manager", WorkspaceSettings, unit, lambda s: s.metrics_port,
                      argv)


if __name__ == "__main__":
    sys.exit(main())
