"""The gateway against a real nats-server and real git repositories: accepting runs,
rejecting bad input without a trace, idempotency, the read model, cancel, the outbox."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.base import utcnow
from schemas.runs import FileChange, RepoRef, RunResult, StartRun
from schemas.streams import CMD, EXECUTORS_BUCKET
from services.core.bus import Bus
from services.core.natsd import NatsServer
from services.gateway.outbox import Outbox
from services.gateway.store import NewRun
from services.gateway.views import Message
from tests.support.buses import wait_for
from tests.support.gateway_harness import (
    FakeScheduler,
    Gateway,
    announce,
    fake_scheduler,
    run_event,
    running_gateway,
)


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    return path


@pytest.fixture
async def gw(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(
        nats_server.url, tmp_path / "data", reconcile_seconds=0.1, redispatch_after_seconds=3600
    ) as gateway:
        yield gateway


@pytest.fixture
async def sched(nats_server: NatsServer, gw: Gateway) -> AsyncIterator[FakeScheduler]:
    async with fake_scheduler(nats_server.url) as fake:
        yield fake


@pytest.fixture
async def task_id(gw: Gateway, git_repo: Path) -> str:
    """A repo, a task on it, and two executors announced by a runner."""
    repo = await gw.post("/v1/repos", {"url": str(git_repo)})
    task = await gw.post("/v1/tasks", {"repo_id": repo.json()["id"], "title": "demo"})
    await announce(gw.bus, "claude", "codex")
    return str(task.json()["id"])


async def start_runs(gw: Gateway, task_id: str, *executors: str, **extra: Any) -> dict[str, Any]:
    resp = await gw.post(f"/v1/tasks/{task_id}/runs",
                         {"instruction": "fix the bug", "executors": list(executors), **extra})
    assert resp.status_code == 202, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_runs_are_accepted_and_one_start_run_per_executor_is_published(
    gw: Gateway, sched: FakeScheduler, git_repo: Path
) -> None:
    repo = await gw.post("/v1/repos", {"url": str(git_repo)})
    assert repo.status_code == 201
    assert repo.json()["default_branch"] == "main"
    again = await gw.post("/v1/repos", {"url": str(git_repo) + "/"})
    assert again.status_code == 200
    assert again.json()["id"] == repo.json()["id"]
    task = await gw.post("/v1/tasks", {"repo_id": repo.json()["id"]})
    assert task.status_code == 201
    await announce(gw.bus, "claude", "codex")

    body = await start_runs(gw, task.json()["id"], "claude", "codex", base_ref="main")

    runs = {run["executor"]: run for run in body["runs"]}
    assert set(runs) == {"claude", "codex"}
    assert all(run["state"] == "queued" for run in runs.values())
    await wait_for(lambda: len(sched.starts) == 2)
    for start, delivery in sched.starts:
        assert delivery.headers["Nats-Msg-Id"] == f"run:{start.run_id}:start"
        assert start.run_id == runs[start.executor]["id"]
        assert start.message_id == body["message"]["id"]
        assert start.repo.url == str(git_repo)
        assert start.base_ref == "main"
        assert start.instruction == "fix the bug"
        assert start.previous_run_id is None
    assert await gw.store.outbox_backlog() == 0
    detail = (await gw.client.get(f"/v1/tasks/{task.json()['id']}")).json()
    assert [m["id"] for m in detail["messages"]] == [body["message"]["id"]]
    assert {r["id"] for r in detail["runs"]} == {r["id"] for r in runs.values()}


async def test_a_follow_up_continues_each_executors_latest_run(
    gw: Gateway, sched: FakeScheduler, task_id: str
) -> None:
    first = (await start_runs(gw, task_id, "claude"))["runs"][0]
    result = RunResult(session_id="sess-1", summary="done")
    await gw.deliver(run_event(first["id"], task_id, "succeeded", 4, result=result))

    await start_runs(gw, task_id, "claude", "codex")

    await wait_for(lambda: len(sched.starts) == 3)
    follow_ups = {start.executor: start for start, _ in sched.starts[1:]}
    assert follow_ups["claude"].previous_run_id == first["id"]
    assert follow_ups["claude"].resume_session == "sess-1"
    assert follow_ups["codex"].previous_run_id is None
    assert follow_ups["codex"].resume_session is None


RUNS = "/v1/tasks/{task}/runs"
BAD_REQUESTS: list[tuple[str, str, Any, int, str | None]] = [
    ("malformed json", RUNS, b'{"instruction": ', 400, None),
    ("missing instruction", RUNS, {"executors": ["claude"]}, 422, "instruction"),
    ("blank instruction", RUNS, {"instruction": "  ", "executors": ["claude"]}, 422,
     "instruction"),
    ("unknown field", RUNS, {"instruction": "x", "executors": ["claude"], "colour": "red"}, 422,
     "colour"),
    ("unknown executor", RUNS, {"instruction": "x", "executors": ["claude", "nope"]}, 422,
     "executors"),
    ("duplicate executor", RUNS, {"instruction": "x", "executors": ["claude", "claude"]}, 422,
     "executors"),
    ("no executor", RUNS, {"instruction": "x", "executors": []}, 422, "executors"),
    ("executor not a subject token", RUNS, {"instruction": "x", "executors": ["a.>"]}, 422,
     "executors[0]"),
    ("option as base_ref", RUNS, {"instruction": "x", "executors": ["claude"],
                                  "base_ref": "--upload-pack=x"}, 422, "base_ref"),
    ("negative timeout", RUNS, {"instruction": "x", "executors": ["claude"],
                                "timeout_seconds": -1}, 422, "timeout_seconds"),
    ("body not an object", RUNS, ["x"], 422, "$"),
    ("unknown task", "/v1/tasks/task_nope/runs", {"instruction": "x", "executors": ["claude"]},
     404, None),
    ("missing repository path", "/v1/repos", {"url": "/nonexistent/repo"}, 422, "url"),
    ("relative path", "/v1/repos", {"url": "repo"}, 422, "url"),
    ("directory that is no repository", "/v1/repos", {"url": "{tmp}"}, 422, "url"),
    ("credentials in url", "/v1/repos", {"url": "https://u:secret@example.com/r.git"}, 422,
     "url"),
    ("unknown repo", "/v1/tasks", {"repo_id": "repo_nope"}, 422, "repo_id"),
    ("cancel of unknown run", "/v1/runs/run_nope/cancel", None, 404, None),
]


@pytest.mark.parametrize(("path", "body", "status", "field"),
                         [case[1:] for case in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
async def test_a_bad_request_is_refused_and_changes_nothing(
    gw: Gateway, task_id: str, tmp_path: Path, path: str, body: Any, status: int,
    field: str | None,
) -> None:
    before = await gw.snapshot()
    if isinstance(body, dict) and body.get("url") == "{tmp}":
        body = {"url": str(tmp_path)}
    content = body if isinstance(body, bytes) else msgspec.json.encode(body)
    resp = await gw.client.post(
        path.format(task=task_id), content=content if body is not None else b"",
        headers={"Idempotency-Key": "k-1", "content-type": "application/json"},
    )
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error.get("field") == field
    assert error["request_id"] == resp.headers["x-request-id"]
    assert await gw.snapshot() == before


async def test_an_unknown_executor_error_lists_the_known_ones(gw: Gateway, task_id: str) -> None:
    resp = await gw.post(f"/v1/tasks/{task_id}/runs", {"instruction": "x", "executors": ["nope"]})
    assert resp.status_code == 422
    assert "claude" in resp.json()["error"]["message"]
    assert "codex" in resp.json()["error"]["message"]


async def test_an_executor_not_installed_is_refused(
    gw: Gateway, bus: Bus, task_id: str
) -> None:
    await bus.kv_put(EXECUTORS_BUCKET.name, "gemini", msgspec.json.encode(
        {"name": "gemini", "concurrency": 1, "installed": False}))
    await asyncio.sleep(1.1)  # past the registry's one-second cache
    before = await gw.snapshot()
    resp = await gw.post(f"/v1/tasks/{task_id}/runs",
                         {"instruction": "x", "executors": ["claude", "gemini"]})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "executor_not_installed"
    assert "gemini" in resp.json()["error"]["message"]
    assert await gw.snapshot() == before


async def test_with_no_runner_online_runs_are_refused(gw: Gateway, git_repo: Path) -> None:
    repo = await gw.post("/v1/repos", {"url": str(git_repo)})
    task = await gw.post("/v1/tasks", {"repo_id": repo.json()["id"]})
    before = await gw.snapshot()
    resp = await gw.post(f"/v1/tasks/{task.json()['id']}/runs",
                         {"instruction": "x", "executors": ["claude"]})
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "executors"
    assert "no executor runner is online" in resp.json()["error"]["message"]
    assert await gw.snapshot() == before


async def test_an_idempotency_key_replays_the_first_answer(
    gw: Gateway, sched: FakeScheduler, task_id: str
) -> None:
    path = f"/v1/tasks/{task_id}/runs"
    first = await gw.post(path, {"instruction": "x", "executors": ["claude"]},
                          **{"Idempotency-Key": "abc"})
    assert first.status_code == 202
    before = await gw.snapshot()
    # The same JSON with its keys in another order is the same request.
    replay = await gw.client.post(path, content=b'{"executors":["claude"],"instruction":"x"}',
                                  headers={"Idempotency-Key": "abc"})
    assert replay.status_code == 202
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    assert "Idempotent-Replayed" not in first.headers
    assert await gw.snapshot() == before
    assert len(sched.starts) <= 1

    reused = await gw.post(path, {"instruction": "y", "executors": ["claude"]},
                           **{"Idempotency-Key": "abc"})
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    other_path = await gw.post("/v1/tasks", {"repo_id": "x"}, **{"Idempotency-Key": "abc"})
    assert other_path.json()["error"]["code"] == "idempotency_key_reused"
    assert await gw.snapshot() == before


async def test_concurrent_requests_with_one_key_act_once(gw: Gateway, task_id: str) -> None:
    before_counts, before_seq = await gw.snapshot()

    async def attempt() -> int:
        resp = await gw.post(f"/v1/tasks/{task_id}/runs",
                             {"instruction": "x", "executors": ["claude"]},
                             **{"Idempotency-Key": "same"})
        return resp.status_code

    statuses = await asyncio.gather(*(attempt() for _ in range(8)))
    assert set(statuses) <= {202, 409}
    assert 202 in statuses
    counts, seq = await gw.snapshot()
    assert counts["messages"] == before_counts["messages"] + 1
    assert counts["runs"] == before_counts["runs"] + 1
    assert seq == before_seq + 1


async def test_idempotency_keys_expire(nats_server: NatsServer, tmp_path: Path,
                                       git_repo: Path) -> None:
    async with running_gateway(nats_server.url, tmp_path / "d", idempotency_ttl_seconds=0.3) as gw:
        repo = await gw.post("/v1/repos", {"url": str(git_repo)}, **{"Idempotency-Key": "k"})
        assert repo.status_code == 201
        assert (await gw.store.counts())["idempotency_keys"] == 1

        async def expired() -> bool:
            return (await gw.store.counts())["idempotency_keys"] == 0

        await wait_for(expired, timeout=5)
        task = await gw.post("/v1/tasks", {"repo_id": repo.json()["id"]},
                             **{"Idempotency-Key": "k"})
        assert task.status_code == 201


async def test_the_read_model_keeps_the_newest_version(gw: Gateway, task_id: str) -> None:
    run = (await start_runs(gw, task_id, "claude"))["runs"][0]
    files = [FileChange(path="a.py", added=3, removed=1)]
    done = RunResult(summary="fixed", commit_sha="c0ffee", files_changed=files, diff="+x\n")
    await gw.deliver(
        run_event(run["id"], task_id, "running", 3), run_event(run["id"], task_id, "queued", 1),
        run_event(run["id"], task_id, "preparing", 2), run_event(run["id"], task_id, "running", 3),
    )
    seen = (await gw.client.get(f"/v1/runs/{run['id']}")).json()
    assert (seen["state"], seen["version"]) == ("running", 3)

    await gw.deliver(run_event(run["id"], task_id, "succeeded", 4, result=done),
                     run_event(run["id"], task_id, "committing", 3))
    final = (await gw.client.get(f"/v1/runs/{run['id']}")).json()
    assert (final["state"], final["version"], final["summary"]) == ("succeeded", 4, "fixed")
    assert final["files_changed"] == [{"path": "a.py", "added": 3, "removed": 1, "status": "M"}]
    assert final["diff"] == "+x\n"
    assert final["message_id"] == run["message_id"]
    without = (await gw.client.get(f"/v1/runs/{run['id']}?diff=0")).json()
    assert without["diff"] is None
    assert without["commit_sha"] == "c0ffee"


async def test_an_event_for_an_unknown_run_is_kept(gw: Gateway) -> None:
    await gw.deliver(run_event("run_elsewhere", "task_x", "running", 2, executor="codex"))
    run = (await gw.client.get("/v1/runs/run_elsewhere")).json()
    assert (run["state"], run["executor"], run["task_id"]) == ("running", "codex", "task_x")


async def test_cancel_publishes_cancel_run_and_a_finished_run_is_a_conflict(
    gw: Gateway, sched: FakeScheduler, task_id: str
) -> None:
    run = (await start_runs(gw, task_id, "claude"))["runs"][0]
    resp = await gw.client.post(f"/v1/runs/{run['id']}/cancel")
    assert resp.status_code == 202
    assert resp.json() == {"id": run["id"], "state": "queued", "cancel_requested": True}
    await wait_for(lambda: len(sched.cancels) == 1)
    cancel, delivery = sched.cancels[0]
    assert cancel.run_id == run["id"]
    assert delivery.headers["Nats-Msg-Id"] == f"run:{run['id']}:cancel"

    await gw.deliver(run_event(run["id"], task_id, "canceled", 2))
    before = await gw.snapshot()
    again = await gw.client.post(f"/v1/runs/{run['id']}/cancel")
    assert again.status_code == 409
    assert await gw.snapshot() == before


async def test_the_reconciler_publishes_a_run_whose_start_was_lost(
    gw: Gateway, sched: FakeScheduler, task_id: str
) -> None:
    """A run accepted (committed) but never published, as after a crash between the two."""
    now = utcnow()
    message = Message(id="msg_lost", task_id=task_id, instruction="x", executors=["claude"],
                      base_ref=None, timeout_seconds=None, created_at=now)
    command = StartRun(run_id="run_lost", task_id=task_id, message_id=message.id,
                       repo=RepoRef(repo_id="r", url="/r"), instruction="x", executor="claude",
                       accepted_at=now)
    item = NewRun.of(command, "req-lost")
    await gw.store.accept(message, [item], now.timestamp() - 1, None)

    await wait_for(lambda: len(sched.starts) == 1)
    start, delivery = sched.starts[0]
    assert start == command
    assert delivery.headers["Nats-Msg-Id"] == "run:run_lost:start"
    assert delivery.headers["Correlation-Id"] == "req-lost"

    async def recorded() -> bool:
        return await gw.store.outbox_backlog() == 0

    await wait_for(recorded)


async def test_a_start_run_taken_without_an_answer_is_published_again_until_answered(
    nats_server: NatsServer, gw: Gateway, task_id: str
) -> None:
    run = (await start_runs(gw, task_id, "claude"))["runs"][0]
    now = [utcnow() + timedelta(hours=2)]
    outbox = Outbox(gw.store, gw.bus, lambda: now[0], redispatch_after=15.0)
    assert await outbox.sweep() == 0  # still queued: the scheduler has not got to it yet
    subject = f"{StartRun.subject_prefix}.{run['id']}"

    async def taken() -> bool:
        return not await gw.bus.has_message(CMD.name, subject)

    async with fake_scheduler(nats_server.url) as sched:  # takes it, never says a word
        await wait_for(taken)
        now[0] += timedelta(seconds=16)
        assert await outbox.sweep() == 1
        await wait_for(lambda: len(sched.starts) == 2)
    assert sched.starts[1][1].headers["Nats-Msg-Id"] == f"run:{run['id']}:start:r1"
    now[0] += timedelta(seconds=16)
    assert await outbox.sweep() == 0  # backs off: the next time is 30 s later

    await gw.deliver(run_event(run["id"], task_id, "queued", 1))
    now[0] += timedelta(days=1)
    assert await outbox.sweep() == 0  # the scheduler has answered: never again


async def test_nats_down_answers_503_and_stores_nothing(
    nats_server: NatsServer, gw: Gateway, sched: FakeScheduler, task_id: str
) -> None:
    before_counts, before_seq = await gw.snapshot()
    await nats_server.stop(kill=True)
    await wait_for(lambda: not gw.bus.connected)

    resp = await gw.post(f"/v1/tasks/{task_id}/runs", {"instruction": "x", "executors": ["claude"]},
                         **{"Idempotency-Key": "down"})
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "bus_unavailable"
    assert resp.headers["Retry-After"]
    assert await gw.store.counts() == before_counts

    await nats_server.start()
    await wait_for(lambda: gw.bus.connected, timeout=15)
    assert await gw.bus.stream_last_seq(CMD.name) == before_seq
    retried = await gw.post(f"/v1/tasks/{task_id}/runs",
                            {"instruction": "x", "executors": ["claude"]},
                            **{"Idempotency-Key": "down"})
    assert retried.status_code == 202
    await wait_for(lambda: len(sched.starts) == 1, timeout=15)


async def _tiny_queue(nats_server: NatsServer, *, full: bool) -> Bus:
    """Create the command stream with room for one message before the gateway starts (it
    does not own the stream, so it leaves the config alone); fill it when asked."""
    bus = await Bus.connect(nats_server.url, name="filler")
    await bus.ensure_stream(msgspec.structs.replace(CMD, max_msgs=1))
    if full:
        await bus.publish_raw("zloth.cmd.filler", b"{}", msg_id="filler")
    return bus


async def test_a_full_queue_answers_503_with_retry_after(
    nats_server: NatsServer, tmp_path: Path, git_repo: Path
) -> None:
    filler = await _tiny_queue(nats_server, full=True)
    async with running_gateway(nats_server.url, tmp_path / "d") as gw:
        repo = await gw.post("/v1/repos", {"url": str(git_repo)})
        task = await gw.post("/v1/tasks", {"repo_id": repo.json()["id"]})
        await announce(gw.bus, "claude")
        before = await gw.snapshot()
        resp = await gw.post(f"/v1/tasks/{task.json()['id']}/runs",
                             {"instruction": "x", "executors": ["claude"]},
                             **{"Idempotency-Key": "full"})
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "queue_full"
        assert int(resp.headers["Retry-After"]) > 0
        assert await gw.snapshot() == before
    await filler.close()


async def test_once_one_start_run_left_the_accept_stands(
    nats_server: NatsServer, tmp_path: Path, git_repo: Path
) -> None:
    """Room for one of two StartRuns: the first went out, so the request cannot be undone;
    it is answered 202 and the outbox owes the second."""
    filler = await _tiny_queue(nats_server, full=False)
    async with running_gateway(nats_server.url, tmp_path / "d", reconcile_seconds=3600) as gw:
        repo = await gw.post("/v1/repos", {"url": str(git_repo)})
        task = await gw.post("/v1/tasks", {"repo_id": repo.json()["id"]})
        await announce(gw.bus, "claude", "codex")
        resp = await gw.post(f"/v1/tasks/{task.json()['id']}/runs",
                             {"instruction": "x", "executors": ["claude", "codex"]})
        assert resp.status_code == 202
        counts = await gw.store.counts()
        assert (counts["messages"], counts["runs"]) == (1, 2)
        assert await gw.store.outbox_backlog() == 1
    await filler.close()


async def test_tasks_are_listed_newest_first_a_page_at_a_time(gw: Gateway, git_repo: Path) -> None:
    repo = (await gw.post("/v1/repos", {"url": str(git_repo)})).json()
    ids = [(await gw.post("/v1/tasks", {"repo_id": repo["id"]})).json()["id"] for _ in range(3)]
    page = (await gw.client.get("/v1/tasks?limit=2")).json()
    assert [t["id"] for t in page["tasks"]] == ids[::-1][:2]
    rest = (await gw.client.get(f"/v1/tasks?limit=2&before={page['next_before']}")).json()
    assert [t["id"] for t in rest["tasks"]] == [ids[0]]
    assert rest["next_before"] is None
    assert (await gw.client.get("/v1/tasks?limit=0")).json()["error"]["field"] == "limit"
    assert (await gw.client.get("/v1/tasks?before=task_x")).json()["error"]["field"] == "before"
    assert (await gw.client.get("/v1/tasks/task_x")).status_code == 404
    assert (await gw.client.get("/v1/runs/run_x")).status_code == 404
    listed = (await gw.client.get("/v1/repos")).json()["repos"]
    assert [r["id"] for r in listed] == [repo["id"]]


async def test_executors_lists_what_runners_announced(gw: Gateway) -> None:
    assert (await gw.client.get("/v1/executors")).json() == {"executors": []}
    await announce(gw.bus, "gemini", "claude", concurrency=3)

    async def listed() -> list[tuple[str, int]]:
        # Reads are cached for a second: the announcement shows up within it.
        executors = (await gw.client.get("/v1/executors")).json()["executors"]
        return [(e["name"], e["concurrency"]) for e in executors]

    await wait_for(listed, timeout=5)
    assert await listed() == [("claude", 3), ("gemini", 3)]


async def test_openapi_document_describes_every_route(gw: Gateway) -> None:
    resp = await gw.client.get("/openapi.json")
    doc = resp.json()
    assert doc["openapi"].startswith("3.1")
    expected = {
        "/v1/repos": {"get", "post"}, "/v1/tasks": {"get", "post"}, "/v1/tasks/{id}": {"get"},
        "/v1/tasks/{id}/runs": {"post"}, "/v1/runs/{id}": {"get"},
        "/v1/runs/{id}/cancel": {"post"}, "/v1/executors": {"get"},
    }
    assert {path: set(ops) for path, ops in doc["paths"].items()} == expected
    schemas = doc["components"]["schemas"]
    assert schemas["CreateRuns"]["additionalProperties"] is False

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


async def test_healthz_reports_ok(gw: Gateway) -> None:
    resp = await gw.client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json()["services"]["gateway"]["ok"] is True


async def _check(env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.gateway", "--check",
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_check_flag_reports_missing_streams_then_ok(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    env = {"ZLOTH_NATS_URL": nats_server.url, "ZLOTH_DATA_DIR": str(tmp_path / "d"),
           "ZLOTH_LOG_FORMAT": "json"}
    code, out, err = await _check(env)
    assert code == 1
    assert "stream ZLOTH_CMD" in err
    async with running_gateway(nats_server.url, tmp_path / "d"):
        code, out, err = await _check(env)
    assert (code, out.strip()) == (0, "gateway: ok")
    code, out, err = await _check({**env, "ZLOTH_NATS_URL": ""})
    assert code == 2
    assert "ZLOTH_NATS_URL" in err
