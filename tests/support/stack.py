"""Run the whole zloth stack for end-to-end tests: in this process (every service on one
event loop, as `zloth up` does) or as separate `zloth serve` processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from services.cli.up import load_units
from services.core.config import CommonSettings
from services.core.runtime import Service, run_services

SERVICE_NAMES = ("scheduler", "workspace-manager", "executor-runner", "log-relay", "gateway")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


TEST_HOST = "testhost"  # the stack's host token (commands and consumers name it)


def stack_env(nats_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment the services read their settings from."""
    env = {
        "ZLOTH_NATS_URL": nats_url,
        "ZLOTH_DATA_DIR": str(data_dir),
        "ZLOTH_LOG_FORMAT": "json",
        "ZLOTH_RECONCILE_SECONDS": "1",
        "ZLOTH_STALL_SECONDS": "3",
        "ZLOTH_ACK_WAIT_SECONDS": "3",
        "ZLOTH_ANNOUNCE_SECONDS": "1",
        "ZLOTH_HOST_ID": TEST_HOST,
    }
    env.update(extra)
    return env


@asynccontextmanager
async def inprocess_stack(
    nats_url: str, data_dir: Path, **extra: str
) -> AsyncIterator[httpx.AsyncClient]:
    """Every service in this event loop, HTTP on a free port; yields a client for it."""
    port = free_port()
    saved = dict(os.environ)
    os.environ.update(stack_env(nats_url, data_dir, **extra))
    try:
        units = load_units(nats_url)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    stopping = asyncio.Event()
    ready = asyncio.Event()

    async def on_ready(_: list[Service]) -> None:
        ready.set()

    settings = CommonSettings(nats_url=nats_url, data_dir=data_dir)
    task = asyncio.create_task(run_services(
        settings, units, nats_url, http_port=port, ready=on_ready, stopping=stopping,
        drain_seconds=10,
    ))
    try:
        async with asyncio.timeout(30):
            await asyncio.wait({task, asyncio.create_task(ready.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            await wait_for_executors(client)
            yield client
    finally:
        stopping.set()
        async with asyncio.timeout(30):
            await task


async def wait_for_executors(client: httpx.AsyncClient,
                             names: tuple[str, ...] = ("demo-a", "demo-b", "demo-c")
                             ) -> None:
    async with asyncio.timeout(20):
        while True:
            listed = (await client.get("/v1/executors")).json()
            if set(names) <= {e["name"] for e in listed.get("executors", [])}:
                return
            await asyncio.sleep(0.1)


class ServiceProcess:
    """One `zloth serve <name>` process with its own environment and log file."""

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "serve", self.name],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

    def kill(self) -> None:
        """SIGKILL the service process alone (its agents, in their own sessions, live on)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@asynccontextmanager
async def process_stack(
    nats_url: str, data_dir: Path, **extra: str
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, ServiceProcess]]]:
    """Each service its own OS process; yields a gateway client and the processes."""
    port = free_port()
    env = stack_env(nats_url, data_dir, ZLOTH_GATEWAY_PORT=str(port),
                    ZLOTH_LOG_RELAY_PORT=str(free_port()),
                    ZLOTH_SCHEDULER_METRICS_PORT=str(free_port()),
                    ZLOTH_WORKSPACE_MANAGER_METRICS_PORT=str(free_port()),
                    ZLOTH_EXECUTOR_RUNNER_METRICS_PORT=str(free_port()), **extra)
    procs = {name: ServiceProcess(name, env, data_dir) for name in SERVICE_NAMES}
    data_dir.mkdir(parents=True, exist_ok=True)
    for proc in procs.values():
        proc.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            await _wait_http(client)
            await wait_for_executors(client)
            yield client, procs
    finally:
        for proc in procs.values():
            proc.stop()


async def _wait_http(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                if (await client.get("/healthz")).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


async def submit(client: httpx.AsyncClient, repo: Path, executors: list[str],
                 instruction: str) -> dict[str, Any]:
    repo_doc = (await client.post("/v1/repos", json={"url": str(repo)})).json()
    task = (await client.post("/v1/tasks", json={"repo_id": repo_doc["id"]})).json()
    response = await client.post(f"/v1/tasks/{task['id']}/runs",
                                 json={"instruction": instruction, "executors": executors})
    assert response.status_code == 202, response.text
    return dict(response.json())


async def wait_run(client: httpx.AsyncClient, run_id: str, states: set[str],
                   timeout: float = 60.0) -> dict[str, Any]:
    """The run once it is in one of `states`; on timeout, an AssertionError that shows
    where it stuck (state, attempt, reason, its events) so a CI failure says why."""
    run: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                run = dict((await client.get(f"/v1/runs/{run_id}")).json())
                if run.get("state") in states:
                    return run
                await asyncio.sleep(0.1)
    except TimeoutError:
        shown = {key: run.get(key) for key in
                 ("executor", "state", "attempt", "version", "reason", "previous_run_id",
                  "queued_at", "started_at", "agent_started_at")}
        raise AssertionError(f"run {run_id} not in {sorted(states)} after {timeout:g} s:"
                             f" {shown}; log tail: {await _log_tail(client, run_id)}"
                             ) from None


async def _log_tail(client: httpx.AsyncClient, run_id: str, lines: int = 20) -> list[Any]:
    """The last `lines` log lines of the run's first page (where the stack serves logs)."""
    try:
        page = (await client.get(f"/v1/runs/{run_id}/logs", params={"limit": 1000})).json()
        return [line for chunk in page.get("chunks", []) for line in chunk["lines"]][-lines:]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
        return [f"(logs not available: {error!r})"]
