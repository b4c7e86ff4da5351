"""Workspace-manager settings (`ZLOTH_*` variables)."""

from __future__ import annotations

from pathlib import Path

from services.core.config import CommonSettings


class WorkspaceSettings(CommonSettings, frozen=True, kw_only=True):
    metrics_port: int = 9102  # /metrics and /healthz when run alone; 0 turns them off
    workspaces_dir: Path | None = None  # default: <data_dir>/workspaces
    mirrors_dir: Path | None = None  # default: <data_dir>/mirrors
    mirror_refresh_seconds: float = 30.0
    max_diff_bytes: int = 512 * 1024
    summary_file: str = ".zloth-summary.md"

    @property
    def workspaces_root(self) -> Path:
        return self.workspaces_dir or self.data_dir / "workspaces"

    @property
    def mirrors_root(self) -> Path:
        return self.mirrors_dir or self.data_dir / "mirrors"
