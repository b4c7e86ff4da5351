"""The `zloth` command against a running stack, as a user types it."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from services.core.natsd import NatsServer
from tests.support.gitrepo import make_origin
from tests.support.stack import inprocess_stack


async def zloth(api: str, *args: str, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli.main", "--api", api, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(timeout):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_run_then_show_logs_and_status(nats_server: NatsServer, tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "origin", files=5, commits=1)
    async with inprocess_stack(nats_server.url, tmp_path / "data") as client:
        api = str(client.base_url).rstrip("/")
        code, out = await zloth(api, "run", "--repo", str(origin), "-e", "demo-a", "-e", "demo-b",
                                "Add notes")
        assert code == 0, out
        run_ids = re.findall(r"run (run_[0-9a-f]+)", out)
        assert len(run_ids) == 2
        show_code, shown = await zloth(api, "runs", "show", run_ids[0], "--diff")
        logs_code, logs = await zloth(api, "logs", run_ids[0])
        follow_code, followed = await zloth(api, "logs", run_ids[1], "-f")
        status_code, status = await zloth(api, "status")
        bad_code, bad = await zloth(api, "run", "--repo", str(tmp_path / "nowhere"),
                                    "-e", "demo-a", "x")
    assert "demo-a |" in out and "demo-b |" in out  # interleaved logs, one prefix each
    assert "demo-a: succeeded" in out and "files changed" in out
    assert show_code == 0 and "diff --git" in shown and "succeeded" in shown
    assert logs_code == 0 and "demo-a starting" in logs
    assert follow_code == 0 and "run ended: succeeded" in followed
    assert status_code == 0 and "ZLOTH_CMD" in status and "demo-a" in status
    assert bad_code == 1 and "422" in bad and "url" in bad
