"""Services as separate processes: `kill -9` the executor-runner mid-run; a restarted
runner finishes the run, exactly once, and no agent process is left behind."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

from services.core.bus import Bus
from services.core.natsd import NatsServer
from tests.support.gitrepo import git, make_origin
from tests.support.procs import pids_with, wait_no_process_with
from tests.support.stack import process_stack, submit, wait_run


async def count_on(bus: Bus, subject: str) -> int:
    return sum([1 async for _ in bus.replay(subject, 1, idle_timeout=1.0)])


async def test_runner_killed_mid_run_is_completed_by_a_restarted_runner(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path / "origin", files=5, commits=1)
    token = f"tok{uuid.uuid4().hex[:10]}"
    data = tmp_path / "data"
    async with process_stack(nats_server.url, data) as (client, procs):
        accepted = await submit(client, origin, ["demo-a"], f"Slow work SLEEP=3 {token}")
        run = accepted["runs"][0]
        async with asyncio.timeout(30):
            while not pids_with(token):
                await asyncio.sleep(0.05)
        first_agents = pids_with(token)
        procs["executor-runner"].kill()
        procs["executor-runner"].start()
        done = await wait_run(client, run["id"], {"succeeded", "failed", "canceled"}, 90)
        await wait_no_process_with(token)
        bus = await Bus.connect(nats_server.url, name="probe")
        try:
            succeeded = await count_on(bus, f"zloth.evt.run.succeeded.*.{run['id']}")
            finished = await count_on(bus, "zloth.evt.exec.finished")
        finally:
            await bus.close()
    assert done["state"] == "succeeded", done.get("reason")
    assert done["attempt"] == 1  # the broker redelivered the attempt; no retry was needed
    assert succeeded == 1
    assert finished == 1
    workspace = data / "workspaces" / run["id"]
    count = git("rev-list", "--count", f"{done['base_sha']}..{done['branch']}", cwd=workspace)
    assert count.strip() == "1"
    assert not set(first_agents) & set(pids_with(token))


async def test_a_frozen_runner_fails_its_run_as_overdue_and_stops_the_agent_on_waking(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """SIGSTOP the only runner while its agent works: the broker cannot hand the command
    to anyone, so the scheduler fails the run itself once the runner's own time limit
    plus the grace has passed. Woken, the runner kills the agent; the run stays failed."""
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    token = f"tok{uuid.uuid4().hex[:10]}"
    async with process_stack(nats_server.url, tmp_path / "data",
                             ZLOTH_OVERDUE_GRACE_SECONDS="2") as (client, procs):
        repo = (await client.post("/v1/repos", json={"url": str(origin)})).json()
        task = (await client.post("/v1/tasks", json={"repo_id": repo["id"]})).json()
        accepted = await client.post(f"/v1/tasks/{task['id']}/runs", json={
            "instruction": f"Slow work SLEEP=60 {token}", "executors": ["demo-a"],
            "timeout_seconds": 3})
        run_id = accepted.json()["runs"][0]["id"]
        async with asyncio.timeout(30):
            while not pids_with(token):
                await asyncio.sleep(0.05)
        runner = procs["executor-runner"].proc
        assert runner is not None
        runner.send_signal(signal.SIGSTOP)
        try:
            done = await wait_run(client, run_id, {"succeeded", "failed", "canceled"}, 30)
            frozen_agents = pids_with(token)  # nobody has stopped it yet: its runner sleeps
        finally:
            runner.send_signal(signal.SIGCONT)
        await wait_no_process_with(token, 20)
        await asyncio.sleep(2)  # the woken runner's late result arrives and is ignored
        after = (await client.get(f"/v1/runs/{run_id}")).json()
    assert done["state"] == "failed", done
    assert str(done["reason"]).startswith("overdue"), done["reason"]
    assert frozen_agents
    assert (after["state"], after["reason"]) == ("failed", done["reason"])


async def test_a_stopped_runner_leaves_no_agent_and_its_run_is_finished_by_the_next(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """SIGTERM the runner while its agent works: it drains for ZLOTH_DRAIN_SECONDS, then
    kills the agent's whole family and exits without acking; a runner started later
    takes the redelivered command and the run succeeds once."""
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    token = f"tok{uuid.uuid4().hex[:10]}"
    async with process_stack(nats_server.url, tmp_path / "data",
                             ZLOTH_DRAIN_SECONDS="1") as (client, procs):
        accepted = await submit(client, origin, ["demo-a"], f"Slow work SLEEP=4 {token}")
        run = accepted["runs"][0]
        async with asyncio.timeout(30):
            while not pids_with(token):
                await asyncio.sleep(0.05)
        procs["executor-runner"].stop()  # SIGTERM, and waits for the exit
        exit_code = procs["executor-runner"].proc.returncode  # type: ignore[union-attr]
        left = pids_with(token)
        procs["executor-runner"].start()
        done = await wait_run(client, run["id"], {"succeeded", "failed", "canceled"}, 90)
    assert exit_code == 0
    assert left == []  # nothing of the agent outlived its runner
    assert done["state"] == "succeeded", done.get("reason")
