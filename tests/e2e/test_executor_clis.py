"""The real agent CLIs (pinned by scripts/install-agents) through the whole stack, each
talking to a local fake provider: edits committed, summary and session recorded, a
follow-up resumes the session. Skipped only when the CLIs are not installed."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from services.core.natsd import NatsServer
from tests.support.fake_providers import FakeProvider, Fault
from tests.support.fake_providers.clis import (
    CLIS,
    KEY_VAR,
    agent_pids,
    cli_spec,
    missing_clis,
    wait_no_agents,
    write_executors,
)
from tests.support.gitrepo import git, make_origin
from tests.support.stack import (
    free_port,
    inprocess_stack,
    process_stack,
    wait_for_executors,
    wait_run,
)


@pytest.fixture(autouse=True)
def _clis_installed() -> None:
    """Skipped where the CLIs are not installed, except in CI (CI=true), which must
    install them: there a missing CLI fails instead of hiding the tests."""
    missing = missing_clis()
    if missing and os.environ.get("CI"):
        pytest.fail(f"agent CLIs missing in CI: {missing}; run scripts/install-agents")
    if missing:
        pytest.skip(f"agent CLIs not installed (scripts/install-agents): {missing}")


TERMINAL = {"succeeded", "failed", "canceled"}


async def post_message(client: httpx.AsyncClient, task_id: str, executors: list[str],
                       instruction: str) -> list[dict[str, object]]:
    response = await client.post(f"/v1/tasks/{task_id}/runs",
                                 json={"instruction": instruction, "executors": executors})
    assert response.status_code == 202, response.text
    return list(response.json()["runs"])


async def new_task(client: httpx.AsyncClient, origin: Path) -> str:
    repo = (await client.post("/v1/repos", json={"url": str(origin)})).json()
    return str((await client.post("/v1/tasks", json={"repo_id": repo["id"]})).json()["id"])


async def test_each_cli_edits_commits_and_resumes_its_session(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path / "origin", files=4, commits=1)
    data = tmp_path / "data"
    with FakeProvider() as fake:
        executors = write_executors(tmp_path / "executors.json",
                                    [cli_spec(cli, fake.url) for cli in CLIS])
        async with inprocess_stack(nats_server.url, data,
                                   ZLOTH_EXECUTORS_FILE=str(executors)) as client:
            await wait_for_executors(client, CLIS)
            listed = {e["name"]: e for e in (await client.get("/v1/executors")).json()
                      ["executors"]}
            task = await new_task(client, origin)
            first = await post_message(client, task, list(CLIS), "Add a note file")
            done = [await wait_run(client, str(r["id"]), TERMINAL, 90) for r in first]
            second = await post_message(client, task, list(CLIS), "Change it again")
            again = [await wait_run(client, str(r["id"]), TERMINAL, 90) for r in second]
        await wait_no_agents(data / "agent-homes")
    for cli in CLIS:
        assert listed[cli]["installed"] is True
        assert listed[cli]["version"] == listed[cli]["pinned_version"]
    for run, follow in zip(done, again, strict=True):
        for one in (run, follow):
            assert one["state"] == "succeeded", (one["executor"], one.get("reason"))
            assert one["summary"] == fake.script.final_text
            assert one["files_changed"], one["executor"]
            assert "FAKE_EDIT.md" in one["diff"]
            workspace = data / "workspaces" / str(one["id"])
            shown = git("show", "--stat", "--format=", str(one["commit_sha"]), cwd=workspace)
            assert "FAKE_EDIT.md" in shown
        assert run["session_id"], run["executor"]
        # a resumed session keeps its id (every CLI here resumes in place)
        assert follow["session_id"] == run["session_id"], follow["executor"]
    # the follow-up's requests carried the first run's conversation
    longest = {
        "claude": max(len(r.body.get("messages", [])) for r in fake.model_requests()),
        "codex": max(len(r.body.get("input", [])) for r in fake.model_requests()),
        "gemini": max(len(r.body.get("contents", [])) for r in fake.model_requests()),
    }
    assert longest["claude"] >= 5 and longest["codex"] >= 6 and longest["gemini"] >= 5, longest
    assert not agent_pids(data / "agent-homes")


FAULTS = {"e400": Fault(status=400), "e429": Fault(status=429, retry_after=1),
          "e500": Fault(status=500), "down": None, "hang": Fault(hang=True)}
# generous: 15 CLIs start at once on a small CI machine, and Gemini CLI starts slowly
IDLE = 20.0
WALL = 30.0


async def test_provider_faults_end_failed_with_a_reason_and_no_process_left(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """400 / 429 / 500 / unreachable / hung provider, for each CLI at once: every run
    ends failed within its timeout, saying why, and none of its processes is left."""
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    data = tmp_path / "data"
    fakes = {name: FakeProvider(fault=fault).start() for name, fault in FAULTS.items()
             if fault is not None}
    urls = {name: fake.url for name, fake in fakes.items()}
    urls["down"] = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    specs = [cli_spec(cli, urls[fault], name=f"{cli}-{fault}", idle_timeout_seconds=IDLE,
                      timeout_seconds=WALL) for cli in CLIS for fault in FAULTS]
    try:
        executors = write_executors(tmp_path / "executors.json", specs)
        async with inprocess_stack(nats_server.url, data,
                                   ZLOTH_EXECUTORS_FILE=str(executors)) as client:
            await wait_for_executors(client, tuple(s.name for s in specs))
            task = await new_task(client, origin)
            names = [s.name for s in specs]
            runs = [run for i in range(0, len(names), 8)  # a message takes 8 executors
                    for run in await post_message(client, task, names[i:i + 8], "Edit")]
            done = {str(r["executor"]): await wait_run(client, str(r["id"]), TERMINAL,
                                                       WALL + 30) for r in runs}
        await wait_no_agents(data / "agent-homes")
    finally:
        for fake in fakes.values():
            fake.stop()
    print({name: (run["state"], run["reason"]) for name, run in done.items()})
    for name, run in done.items():
        assert run["state"] == "failed", (name, run["state"], run.get("reason"))
        assert run["reason"], name
        assert not run["commit_sha"], name
        elapsed = (datetime.fromisoformat(str(run["finished_at"]))
                   - datetime.fromisoformat(str(run["agent_started_at"]))).total_seconds()
        # Ends by its own timeout (the reasons below say which), not by hanging on: a CLI
        # that retries forever would run on. Slack for 15 CLIs starting on 2 cores.
        assert elapsed < 2 * WALL, (name, elapsed)
    for cli in CLIS:  # a 400 is final: the CLI says so itself, well before any timeout
        assert "400" in str(done[f"{cli}-e400"]["reason"]), done[f"{cli}-e400"]["reason"]
        hang = str(done[f"{cli}-hang"]["reason"])
        # Seen twice in CI, for codex only: its process ended by a SIGKILL that none of our
        # timeouts sent, before the idle timeout (open question in the issue notes). The
        # run still ends failed in time with nothing left, which the checks above hold.
        assert hang.startswith(("no output", "wall-clock timeout", "killed by SIGKILL")), hang


CANARIES = {"ZLOTH_CANARY_SECRET": "canary-zloth-7f3a", "GITHUB_TOKEN": "ghp_canary7f3a",
            "ZLOTH_MASTER_KEY": "master-canary-7f3a", "DATABASE_URL": "postgres://canary7f3a",
            "NATS_URL": "nats://canary7f3a"}


async def test_hung_agents_never_see_zloth_secrets_and_cancel_kills_them(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While each CLI waits on a hung provider: no canary of zloth's environment is in
    any of its processes' environment, only its own key is; a cancel then ends every run
    canceled with no process left."""
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    data, homes = tmp_path / "data", tmp_path / "data" / "agent-homes"
    with FakeProvider(fault=Fault(hang=True)) as fake:
        executors = write_executors(tmp_path / "executors.json",
                                    [cli_spec(cli, fake.url) for cli in CLIS])
        async with inprocess_stack(nats_server.url, data,
                                   ZLOTH_EXECUTORS_FILE=str(executors)) as client:
            await wait_for_executors(client, CLIS)
            runs = await post_message(client, await new_task(client, origin), list(CLIS), "x")
            async with asyncio.timeout(60):  # every CLI has sent its request and waits
                while {"messages", "responses", "models"} - {
                    r.path.split("/")[2].split("?")[0] if r.path.startswith("/v1/") else
                    "models" for r in fake.model_requests()
                }:
                    await asyncio.sleep(0.1)
            environments = agent_pids(homes)
            for run in runs:
                assert (await client.post(f"/v1/runs/{run['id']}/cancel")).status_code == 202
            done = [await wait_run(client, str(r["id"]), TERMINAL, 30) for r in runs]
            await wait_no_agents(homes)
    assert len(environments) >= 3
    for pid, environ in environments.items():
        for value in CANARIES.values():
            assert value.encode() not in environ, (pid, value)
        assert b"ZLOTH_" not in environ, pid
    keys = b"\0".join(environments.values())
    assert all(f"{var}=test-key".encode() in keys for var in KEY_VAR.values())
    assert [d["state"] for d in done] == ["canceled"] * 3, [d.get("reason") for d in done]


async def test_an_agent_over_its_memory_limit_fails_saying_so(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Gemini CLI (Node) under a 200 MiB data limit dies at start: the run fails and
    the reason says it ran out of memory."""
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    data = tmp_path / "data"
    with FakeProvider() as fake:
        executors = write_executors(tmp_path / "executors.json", [cli_spec("gemini", fake.url)])
        async with inprocess_stack(nats_server.url, data, ZLOTH_EXECUTORS_FILE=str(executors),
                                   ZLOTH_AGENT_MEMORY_BYTES=str(200 << 20)) as client:
            await wait_for_executors(client, ("gemini",))
            runs = await post_message(client, await new_task(client, origin), ["gemini"], "x")
            run = await wait_run(client, str(runs[0]["id"]), TERMINAL, 60)
        await wait_no_agents(data / "agent-homes")
    assert run["state"] == "failed"
    assert "out of memory" in str(run["reason"]), run["reason"]


async def test_runner_killed_mid_run_leaves_no_cli_and_the_redelivery_succeeds(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """`kill -9` of the runner while Claude Code waits on its provider: the CLI dies with
    it (or is reaped by the restarted runner), the attempt is redelivered and, the
    provider healthy again, succeeds once."""
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    data, homes = tmp_path / "data", tmp_path / "data" / "agent-homes"
    with FakeProvider(fault=Fault(hang=True)) as fake:
        executors = write_executors(tmp_path / "executors.json", [cli_spec("claude", fake.url)])
        async with process_stack(nats_server.url, data,
                                 ZLOTH_EXECUTORS_FILE=str(executors)) as (client, procs):
            await wait_for_executors(client, ("claude",))
            runs = await post_message(client, await new_task(client, origin), ["claude"], "x")
            async with asyncio.timeout(60):
                while not (fake.model_requests() and agent_pids(homes)):
                    await asyncio.sleep(0.1)
            first = set(agent_pids(homes))
            procs["executor-runner"].kill()
            fake.fault = None
            procs["executor-runner"].start()
            run = await wait_run(client, str(runs[0]["id"]), TERMINAL, 90)
        await wait_no_agents(homes)
    assert run["state"] == "succeeded", run.get("reason")
    assert run["attempt"] == 1  # the broker redelivered the same attempt
    assert run["commit_sha"] and "FAKE_EDIT.md" in str(run["diff"])
    assert not first & set(agent_pids(homes))
