"""End to end through the gateway, every service on one event loop (as `zloth up`): real
nats-server, real git, real agent subprocesses."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import msgspec

from services.cli.sse import follow
from services.core.natsd import NatsServer
from services.executor_runner.executors import ExecutorSpec
from tests.support.fake_providers.clis import write_executors
from tests.support.gitrepo import git, make_origin
from tests.support.procs import pids_with, wait_no_process_with
from tests.support.stack import inprocess_stack, submit, wait_run

EXECUTORS = ["demo-a", "demo-b", "demo-c"]


async def test_three_executors_run_in_parallel_to_their_own_commits(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path / "origin", files=10, commits=2)
    async with inprocess_stack(nats_server.url, tmp_path / "data") as client:
        accepted = await submit(client, origin, EXECUTORS, "Document the layout SLEEP=1.5")
        runs = accepted["runs"]
        assert [r["executor"] for r in runs] == EXECUTORS
        assert all(r["state"] == "queued" for r in runs)
        done = [await wait_run(client, r["id"], {"succeeded", "failed", "canceled"})
                for r in runs]
        logs = await read_log(client, runs[0]["id"])
    assert [d["state"] for d in done] == ["succeeded"] * 3, [d.get("reason") for d in done]
    starts = [datetime.fromisoformat(d["agent_started_at"]) for d in done]
    ends = [datetime.fromisoformat(d["finished_at"]) for d in done]
    assert max(starts) < min(ends), "the three agents did not run at the same time"
    shas = set()
    for run in done:
        assert run["branch"] == f"zloth/{run['id']}"
        assert run["commit_sha"] and run["files_changed"] and "diff --git" in run["diff"]
        assert run["summary"]
        workspace = tmp_path / "data" / "workspaces" / run["id"]
        head = git("rev-parse", run["branch"], cwd=workspace).strip()
        assert head == run["commit_sha"]
        count = git("rev-list", "--count", f"{run['base_sha']}..{head}", cwd=workspace)
        assert count.strip() == "1"
        shas.add(head)
    assert len(shas) == 3
    assert any("working" in line for line in logs)


async def read_log(client: httpx.AsyncClient, run_id: str) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(20):
        async for event in follow(client, f"/v1/runs/{run_id}/logs/stream"):
            if event.event == "log":
                lines += [ln["text"] for ln in msgspec.json.decode(event.data)["lines"]]
    return lines


async def test_sse_log_resumes_after_reconnect(nats_server: NatsServer, tmp_path: Path) -> None:
    """The part seen before a disconnect plus the part after a Last-Event-ID resume is the
    whole log, in order, without duplicates."""
    origin = make_origin(tmp_path / "origin", files=5, commits=1)
    async with inprocess_stack(nats_server.url, tmp_path / "data") as client:
        accepted = await submit(client, origin, ["demo-a"], "Count SLEEP=2")
        run_id = accepted["runs"][0]["id"]
        await wait_run(client, run_id, {"succeeded"})
        full: list[tuple[str, str]] = []
        async for event in follow(client, f"/v1/runs/{run_id}/logs/stream"):
            full.append((event.id or "", event.event))
        assert full[-1][1] == "end" and len(full) >= 4
        cut = len(full) // 2
        resumed: list[tuple[str, str]] = []
        async for event in follow(client, f"/v1/runs/{run_id}/logs/stream",
                                  last_event_id=full[cut - 1][0]):
            resumed.append((event.id or "", event.event))
    assert full[:cut] + resumed == full


async def test_cancel_kills_the_agent_and_ends_canceled(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path / "origin", files=5, commits=1)
    token = f"tok{uuid.uuid4().hex[:10]}"
    async with inprocess_stack(nats_server.url, tmp_path / "data") as client:
        accepted = await submit(client, origin, ["demo-a"], f"Wait forever HANG {token}")
        run_id = accepted["runs"][0]["id"]
        async with asyncio.timeout(30):
            while not pids_with(token):
                await asyncio.sleep(0.05)
        response = await client.post(f"/v1/runs/{run_id}/cancel")
        assert response.status_code == 202
        run = await wait_run(client, run_id, {"canceled", "failed", "succeeded"})
        await wait_no_process_with(token)
        await asyncio.sleep(1.0)  # the runner's outcome event arrives after the kill
        after = (await client.get(f"/v1/runs/{run_id}")).json()
    assert run["state"] == "canceled"
    assert after["state"] == "canceled"  # never flips to failed


async def test_bad_requests_change_nothing(nats_server: NatsServer, tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    async with inprocess_stack(nats_server.url, tmp_path / "data") as client:
        repo = (await client.post("/v1/repos", json={"url": str(origin)})).json()
        task = (await client.post("/v1/tasks", json={"repo_id": repo["id"]})).json()
        url = f"/v1/tasks/{task['id']}/runs"
        malformed = await client.post(url, content=b"{not json",
                                      headers={"content-type": "application/json"})
        unknown = await client.post(url, json={"instruction": "x", "executors": ["nope"]})
        missing = await client.post("/v1/repos", json={"url": str(tmp_path / "nowhere")})
        detail = (await client.get(f"/v1/tasks/{task['id']}")).json()
        repos = (await client.get("/v1/repos")).json()
    assert malformed.status_code == 400
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "executors"
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "url"
    assert "request_id" in unknown.json()["error"]
    assert detail["runs"] == [] and detail["messages"] == []
    assert len(repos["repos"]) == 1


async def test_secrets_an_agent_writes_are_not_committed_and_the_run_says_so(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    writer = ExecutorSpec(
        name="writer", command=["sh", "-c", "echo TOKEN=x > .env && echo ok > ok.txt"],
        concurrency=1, timeout_seconds=60, idle_timeout_seconds=60)
    executors = write_executors(tmp_path / "executors.json", [writer])
    async with inprocess_stack(nats_server.url, tmp_path / "data",
                               ZLOTH_EXECUTORS_FILE=str(executors)) as client:
        accepted = await submit(client, origin, ["writer"], "Write files")
        run = await wait_run(client, accepted["runs"][0]["id"],
                             {"succeeded", "failed", "canceled"}, 60)
    assert run["state"] == "succeeded", run.get("reason")
    assert run["reason"] == "not committed (protected paths): .env"
    assert [change["path"] for change in run["files_changed"]] == ["ok.txt"]
    workspace = tmp_path / "data" / "workspaces" / str(run["id"])
    assert git("show", "--format=", "--name-only", str(run["commit_sha"]),
               cwd=workspace).split() == ["ok.txt"]


async def test_with_push_on_each_runs_branch_reaches_the_upstream(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    async with inprocess_stack(nats_server.url, tmp_path / "data", ZLOTH_PUSH="1") as client:
        accepted = await submit(client, origin, ["demo-a", "demo-b"], "Add a note")
        runs = [await wait_run(client, r["id"], {"succeeded", "failed", "canceled"}, 60)
                for r in accepted["runs"]]
    for run in runs:
        assert run["state"] == "succeeded", run.get("reason")
        upstream = git("rev-parse", f"refs/heads/{run['branch']}", cwd=origin)
        assert upstream.strip() == run["commit_sha"]
