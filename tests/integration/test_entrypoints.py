"""Each service is its own package, runnable alone with `python -m services.<name>`: it
comes up on its own /healthz port and stops cleanly (exit 0) on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.core.natsd import NatsServer
from tests.support.stack import free_port

SERVICES = [
    ("services.scheduler", "ZLOTH_SCHEDULER_METRICS_PORT", "scheduler"),
    ("services.workspace_manager", "ZLOTH_WORKSPACE_MANAGER_METRICS_PORT", "workspace-manager"),
    ("services.executor_runner", "ZLOTH_EXECUTOR_RUNNER_METRICS_PORT", "executor-runner"),
]


@pytest.mark.parametrize(("module", "port_var", "name"), SERVICES, ids=[s[2] for s in SERVICES])
def test_a_service_runs_alone_and_stops_on_sigterm(
    nats_server: NatsServer, tmp_path: Path, module: str, port_var: str, name: str
) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("ZLOTH_")}
    env.update(ZLOTH_NATS_URL=nats_server.url, ZLOTH_DATA_DIR=str(tmp_path / "data"),
               ZLOTH_LOG_FORMAT="json", ZLOTH_DRAIN_SECONDS="2", **{port_var: str(port)})
    log = tmp_path / "service.log"
    with log.open("wb") as sink, subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=sink, stderr=sink) as proc:
        try:
            health = _wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, log)
            assert health["services"][name]["ok"] is True
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert '"services_stopped"' in log.read_text()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return dict(response.json())
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered: {log.read_text()[-2000:]}")
