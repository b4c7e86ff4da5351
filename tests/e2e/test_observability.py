"""What an operator sees: metric samples after a few runs (one failing), and the request's
correlation id on log lines of several services."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import structlog
from structlog.testing import LogCapture

from schemas.streams import LLM_BREAKER_BUCKET
from services.cli.status import render_status
from services.core import metrics
from services.core.bus import Bus
from services.core.llm.breaker import BreakerState
from services.core.natsd import NatsServer
from tests.support.buses import wait_for
from tests.support.gitrepo import make_origin
from tests.support.stack import TEST_HOST, inprocess_stack, submit, wait_run

TERMINAL = {"succeeded", "failed", "canceled"}


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def captured() -> Iterator[LogCapture]:
    capture = LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        yield capture
    finally:
        structlog.reset_defaults()


async def test_metrics_and_correlated_logs_of_a_few_runs(
    nats_server: NatsServer, tmp_path: Path, captured: LogCapture
) -> None:
    origin = make_origin(tmp_path / "origin", files=5, commits=1)
    before = {
        "ok": sample("zloth_jobs_total", kind=f"exec-demo-a-{TEST_HOST}", status="ok"),
        "failed": sample("zloth_run_transitions_total", state="failed"),
        "succeeded": sample("zloth_run_transitions_total", state="succeeded"),
        "dispatch": sample("zloth_queue_latency_seconds_count", kind="sched-start"),
        "start": sample("zloth_job_start_latency_seconds_count", executor="demo-a"),
        "clone": sample("zloth_git_clone_seconds_count", kind="workspace"),
        "clone_bytes": sample("zloth_git_clone_bytes_count", kind="workspace"),
    }
    async with inprocess_stack(nats_server.url, tmp_path / "data",
                               ZLOTH_GC_INTERVAL_SECONDS="1") as client:
        good = await submit(client, origin, ["demo-a", "demo-b"], "Describe it")
        bad = await submit(client, origin, ["demo-a"], "Break it FAIL")
        runs = [*good["runs"], *bad["runs"]]
        done = [await wait_run(client, r["id"], TERMINAL) for r in runs]
        await open_breaker(nats_server.url, "anthropic")
        await asyncio.sleep(6)  # one status round refreshes the queue gauges
        # gauges refreshed by periodic work, and the workspace sizes measured once each
        # run's terminal event reached the workspace-manager
        await wait_for(lambda: sample("zloth_runs", state="succeeded") == 2, 20)
        await wait_for(lambda: sample("zloth_git_clone_bytes_count", kind="workspace")
                       - before["clone_bytes"] == 3, 20)
        exported = (await client.get("/metrics")).text
        status = await status_with_disk(client)
    assert [d["state"] for d in done] == ["succeeded", "succeeded", "failed"]
    ok = sample("zloth_jobs_total", kind=f"exec-demo-a-{TEST_HOST}", status="ok")
    assert ok - before["ok"] == 2
    assert sample("zloth_run_transitions_total", state="failed") - before["failed"] == 1
    assert sample("zloth_run_transitions_total", state="succeeded") - before["succeeded"] == 2
    assert sample("zloth_queue_latency_seconds_count", kind="sched-start") - before["dispatch"] == 3
    assert sample("zloth_job_start_latency_seconds_count", executor="demo-a") - before["start"] == 2
    assert sample("zloth_git_clone_seconds_count", kind="workspace") - before["clone"] == 3
    assert sample("zloth_git_clone_bytes_count", kind="workspace") - before["clone_bytes"] == 3
    assert sample("zloth_runs", state="succeeded") == 2  # the scheduler's view, refreshed
    assert sample("zloth_runs", state="failed") == 1
    assert sample("zloth_workspace_bytes") > 0 and sample("zloth_mirror_bytes") > 0
    assert sum(sample("zloth_workspaces", state=s) for s in ("active", "finished", "warm")) >= 3
    assert sample("zloth_queue_size", kind=f"exec-demo-a-{TEST_HOST}") == 0
    assert sample("zloth_queue_ack_pending", kind=f"exec-demo-a-{TEST_HOST}") == 0
    assert 'zloth_http_request_duration_seconds_count{method="POST"' in exported
    assert status["runs_by_state"] == {"succeeded": 2, "failed": 1}
    assert status["executors"]["demo-a"]["concurrency"] >= 1
    assert status["streams"]["ZLOTH_CMD"]["messages"] == 0
    assert any(key.startswith("scheduler.") for key in status["services"])
    # the one-screen view: concurrency in use, breakers, disk per host
    assert status["executors_in_use"]["demo-a"] == {"running": 0, "concurrency": 4}
    assert status["breakers"]["anthropic"]["state"] == "open"
    disk = status["disk"][TEST_HOST]
    assert sum(disk["workspaces"].values()) >= 3 and disk["workspaces_bytes"] > 0
    assert disk["mirrors_bytes"] > 0
    screen = io.StringIO()
    render_status(status, screen)
    assert "anthropic open" in screen.getvalue()
    assert re.search(r"^demo-a\s+yes\s+0/4", screen.getvalue(), re.MULTILINE)
    assert re.search(rf"^{TEST_HOST}\s+\d+\s+[\d.]+ [KMG]?i?B", screen.getvalue(),
                     re.MULTILINE)

    request_id = correlated_request(captured.entries, bad["runs"][0]["id"])
    services = {e.get("service") for e in captured.entries
                if e.get("correlation_id") == request_id}
    assert {"gateway", "scheduler", "workspace-manager", "executor-runner"} <= services


def correlated_request(entries: list[MutableMapping[str, Any]], run_id: str) -> str:
    """The correlation id on the scheduler's handling of this run's StartRun."""
    for entry in entries:
        if entry.get("run_id") == run_id and entry.get("subject", "").startswith(
            "zloth.cmd.sched.start"
        ):
            corr = entry.get("correlation_id")
            assert isinstance(corr, str) and corr.startswith("req-")
            return corr
    raise AssertionError("no log line of the scheduler handling the run's StartRun")


async def open_breaker(nats_url: str, provider: str) -> None:
    """As the LLM client writes it when a provider keeps failing."""
    bus = await Bus.connect(nats_url, name="probe")
    try:
        await bus.ensure_bucket(LLM_BREAKER_BUCKET)
        state = BreakerState(state="open", open_until=time.time() + 600)
        await bus.kv_put(LLM_BREAKER_BUCKET.name, provider, msgspec.json.encode(state))
    finally:
        await bus.close()


async def status_with_disk(client: httpx.AsyncClient) -> dict[str, Any]:
    """`/v1/status` once the workspace-manager has reported a sweep after the runs."""
    async with asyncio.timeout(30):
        while True:
            status: dict[str, Any] = (await client.get("/v1/status")).json()
            disk = status.get("disk", {}).get(TEST_HOST, {})
            if disk.get("workspaces_bytes"):
                return status
            await asyncio.sleep(0.5)
