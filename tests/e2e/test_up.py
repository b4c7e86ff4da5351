"""The README's quick start: `zloth up --demo` on its embedded defaults (its own
nats-server, SQLite, no accounts) runs three agents on a sample repository and commits
each one's work. `--demo-then-exit` is the same, ending after the demo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.gitrepo import git
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
