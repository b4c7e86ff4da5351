"""The README's quick start: `zloth up --demo` on its embedded defaults (its own
nats-server, SQLite, no accounts) runs three agents on a sample repository and commits
each one's work. `--demo-then-exit` is the same, ending after the demo."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from services.core.natsd import NatsServer
from tests.support.gitrepo import git
from tests.support.procs import pids_with
from tests.support.stack import free_port


def test_zloth_up_demo_runs_three_agents_on_embedded_defaults(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ZLOTH_")}
    env.update(ZLOTH_DATA_DIR=str(tmp_path / "data"), ZLOTH_PORT=str(free_port()))
    done = subprocess.run([sys.executable, "-m", "services.cli.main", "up", "--demo-then-exit"],
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "zloth is up" in out and "(NATS nats://127.0.0.1:" in out  # embedded server
    finished = re.findall(r"^(demo-[abc]): succeeded .* branch (\S+)\s+commit ([0-9a-f]+)",
                          out, re.MULTILINE)
    assert sorted(name for name, _, _ in finished) == ["demo-a", "demo-b", "demo-c"], out
    for name, branch, sha in finished:
        run_id = branch.rsplit("/", 1)[1]
        workspace = tmp_path / "data" / "workspaces" / run_id
        assert git("rev-parse", branch, cwd=workspace).startswith(sha), name
    assert (tmp_path / "data" / "db").is_dir()  # SQLite stores, no external database


def test_zloth_up_on_a_given_nats_stops_cleanly_on_ctrl_c(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """With ZLOTH_NATS_URL set no embedded server starts; Ctrl-C (SIGINT) drains every
    service and exits 0."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ZLOTH_")}
    port = free_port()
    env.update(ZLOTH_DATA_DIR=str(tmp_path / "data"), ZLOTH_PORT=str(port),
               ZLOTH_NATS_URL=nats_server.url, ZLOTH_DRAIN_SECONDS="5")
    with subprocess.Popen([sys.executable, "-m", "services.cli.main", "up"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert f"(NATS {nats_server.url}," in first, first
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
            assert not [pid for pid in pids_with("nats-server") if _child_of(pid, proc.pid)]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def _child_of(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent
