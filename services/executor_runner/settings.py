"""Executor-runner settings (`ZLOTH_*` variables)."""

from __future__ import annotations

from pathlib import Path

from services.core.config import CommonSettings


class RunnerSettings(CommonSettings, frozen=True, kw_only=True):
    metrics_port: int = 9103  # /metrics and /healthz when run alone; 0 turns them off
    executors_file: Path | None = None  # JSON list of executor specs; default: built-ins
    executors: list[str] = []  # serve only these (default: all defined)
    ack_wait_seconds: float = 30.0
    announce_seconds: float = 10.0
    summary_file: str = ".zloth-summary.md"
    max_log_bytes: int = 10 * 1024 * 1024
    agent_memory_bytes: int | None = 4 * 1024 * 1024 * 1024
    agent_cpu_seconds: int | None = None
    agent_file_size_bytes: int | None = 1024 * 1024 * 1024
    agent_open_files: int | None = 4096
    agents_bin: Path | None = None  # the pinned CLIs; default <repo>/.agents/node_modules/.bin

    @property
    def homes_dir(self) -> Path:
        return self.data_dir / "agent-homes"

    @property
    def sessions_dir(self) -> Path:
        return self.data_dir / "agent-sessions"

    @property
    def pidfile_dir(self) -> Path:
        return self.data_dir / "agent-pids"
