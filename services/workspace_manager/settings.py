"""Workspace-manager settings (`ZLOTH_*` variables, `ZLOTH_WORKSPACE_MANAGER_*` first)."""

from __future__ import annotations

from pathlib import Path

from services.core.config import CommonSettings


class WorkspaceSettings(CommonSettings, frozen=True, kw_only=True):
    metrics_port: int = 9102  # /metrics and /healthz when run alone; 0 turns them off
    workspaces_dir: Path | None = None  # default: <data_dir>/workspaces
    mirrors_dir: Path | None = None  # default: <data_dir>/mirrors
    mirror_refresh_seconds: float = 30.0
    mirror_filter: str = ""  # e.g. "blob:none": mirrors are partial clones
    mirror_maintenance_seconds: float = 3600.0
    max_diff_bytes: int = 512 * 1024
    summary_file: str = ".zloth-summary.md"
    # Warm pool: ready workspaces per repository used in the last pool_idle_seconds.
    pool_size: int = 2
    pool_idle_seconds: float = 3600.0
    # A finished run's workspace: kept as is for keep_finished_seconds, then recyclable into
    # the pool, removed after retention_seconds or earlier under the disk budget.
    keep_finished_seconds: float = 600.0
    retention_seconds: float = 86_400.0
    disk_budget_bytes: int = 0  # 0: no budget
    gc_interval_seconds: float = 60.0
    conflict_policy: str = "fail"  # follow-up merge conflicts: "fail" | "agent"
    push: bool = False  # push each run's branch upstream after zloth's commit
    push_attempts: int = 4
    git_tokens: dict[str, str] = {}  # host -> token for HTTPS upstreams (JSON in the env)

    @property
    def workspaces_root(self) -> Path:
        return self.workspaces_dir or self.data_dir / "workspaces"

    @property
    def mirrors_root(self) -> Path:
        return self.mirrors_dir or self.data_dir / "mirrors"
