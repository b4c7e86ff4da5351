"""Two hosts on one NATS, each with its own disk (data dir), workspace-manager and
executor-runner: a run's agent and commit happen on the host that made its workspace, and
a follow-up goes back to its previous run's host even when the other host is free."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec

from schemas.executions import ExecutionStarted
from services.core.bus import Bus
from services.core.natsd import NatsServer
from tests.support.gitrepo import git, make_origin
from tests.support.stack import (
    ServiceProcess,
    free_port,
    process_stack,
    stack_env,
    wait_run,
)

TERMINAL = {"succeeded", "failed", "canceled"}


async def post(client: httpx.AsyncClient, task: str, executors: list[str],
               instruction: str = "Add a note") -> list[str]:
    response = await client.post(f"/v1/tasks/{task}/runs",
                                 json={"instruction": instruction, "executors": executors})
    assert response.status_code == 202, response.text
    return [str(run["id"]) for run in response.json()["runs"]]


async def finish(client: httpx.AsyncClient, run_ids: list[str]) -> list[dict[str, object]]:
    return [await wait_run(client, run_id, TERMINAL, 60) for run_id in run_ids]


@asynccontextmanager
async def frozen(service: ServiceProcess) -> AsyncIterator[None]:
    """The service SIGSTOPped (its last pull request, 1 s, expired) until the block ends."""
    assert service.proc is not None
    service.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(2)
        yield
    finally:
        service.proc.send_signal(signal.SIGCONT)


async def runner_ids(nats_url: str) -> dict[str, str]:
    """run id → runner id of the runner that started its agent."""
    bus = await Bus.connect(nats_url, name="probe")
    try:
        return {event.run_id: event.runner_id
                async for _, _, data in bus.replay("zloth.evt.exec.started", idle_timeout=1.0)
                for event in [msgspec.json.decode(data, type=ExecutionStarted)]}
    finally:
        await bus.close()


async def wait_host_consumers(nats_url: str, host: str) -> None:
    bus = await Bus.connect(nats_url, name="probe")
    try:
        async with asyncio.timeout(30):
            while not {f"ws-prepare-{host}", f"exec-demo-a-{host}"} <= set(
                    await bus.consumers_state("ZLOTH_CMD")):
                await asyncio.sleep(0.2)
    finally:
        await bus.close()


async def test_runs_stay_on_their_workspace_host_and_follow_ups_return_to_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    disk = {"hosta": tmp_path / "a", "hostb": tmp_path / "b"}
    env_b = stack_env(nats_server.url, disk["hostb"], ZLOTH_HOST_ID="hostb",
                      ZLOTH_WORKSPACE_MANAGER_METRICS_PORT=str(free_port()),
                      ZLOTH_EXECUTOR_RUNNER_METRICS_PORT=str(free_port()))
    host_b = [ServiceProcess(name, env_b, tmp_path) for name in
              ("workspace-manager", "executor-runner")]
    async with process_stack(nats_server.url, disk["hosta"],
                             ZLOTH_HOST_ID="hosta") as (client, procs):
        repo = (await client.post("/v1/repos", json={"url": str(origin)})).json()
        tasks = [(await client.post("/v1/tasks", json={"repo_id": repo["id"]})).json()["id"]
                 for _ in range(2)]
        on_a = await finish(client, await post(client, tasks[0], ["demo-a", "demo-b"]))
        try:
            for proc in host_b:
                proc.start()
            await wait_host_consumers(nats_server.url, "hostb")
            wm = {"hosta": procs["workspace-manager"], "hostb": host_b[0]}
            async with frozen(wm["hosta"]):  # only host B can prepare now
                on_b = await finish(client, await post(client, tasks[1], ["demo-a", "demo-c"]))
            # a follow-up waits for its previous run's host, though the other one is free
            async with frozen(wm["hostb"]):
                pending_b = await post(client, tasks[1], ["demo-a", "demo-c"], "Change it")
                await asyncio.sleep(2)  # unpinned, host A would have taken them by now
            again_b = await finish(client, pending_b)
            async with frozen(wm["hosta"]):
                pending_a = await post(client, tasks[0], ["demo-a", "demo-b"], "Change it")
                await asyncio.sleep(2)
            again_a = await finish(client, pending_a)
            started_by = await runner_ids(nats_server.url)
            runner_pid = {"hosta": procs["executor-runner"].proc.pid,  # type: ignore[union-attr]
                          "hostb": host_b[1].proc.pid}  # type: ignore[union-attr]
        finally:
            for proc in host_b:
                proc.stop()
    expected = [("hosta", run) for run in on_a + again_a] + [
        ("hostb", run) for run in on_b + again_b]
    for host, run in expected:
        assert run["state"] == "succeeded", (host, run.get("reason"))
        run_id = str(run["id"])
        other = "hostb" if host == "hosta" else "hosta"
        assert (disk[host] / "workspaces" / run_id).is_dir(), (host, run_id)
        assert not (disk[other] / "workspaces" / run_id).exists(), (host, run_id)
        assert started_by[run_id].endswith(f"-{runner_pid[host]}"), (host, started_by[run_id])
    for first, follow in zip(on_a + on_b, again_a + again_b, strict=True):
        assert follow["branch"] == first["branch"]  # the follow-up continued that branch
        host = "hosta" if first in on_a else "hostb"
        parent = git("rev-parse", f"{follow['commit_sha']}^", cwd=disk[host] / "workspaces"
                     / str(follow["id"]))
        assert parent.strip() == first["commit_sha"]
