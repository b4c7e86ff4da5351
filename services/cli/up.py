"""`zloth up`: an embedded nats-server (unless ZLOTH_NATS_URL is set) and every service in
one process on uvloop, the gateway's port serving the log-relay routes and /metrics too."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from services.cli import client as api
from services.core.config import CommonSettings, load_settings
from services.core.entry import run_loop
from services.core.errors import ConfigError, ZlothError
from services.core.natsd import NatsServer
from services.core.runtime import Service, Unit, run_services
from services.core.telemetry import configure_logging, get_logger

UNITS: list[tuple[str, str, str]] = [
    ("scheduler", "services.scheduler", "SchedulerSettings"),
    ("workspace-manager", "services.workspace_manager", "WorkspaceSettings"),
    ("executor-runner", "services.executor_runner", "RunnerSettings"),
    ("log-relay", "services.log_relay", "LogRelaySettings"),
    ("gateway", "services.gateway", "GatewaySettings"),
]
DEMO_EXECUTORS = ["demo-a", "demo-b", "demo-c"]
DEMO_INSTRUCTION = "Add a short note explaining what this repository is for"


class UpSettings(CommonSettings, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8000
    embedded_nats_port: int = -1  # -1: any free port


def load_units(nats_url: str) -> list[Unit]:
    units = []
    for service, package, settings_name in UNITS:
        settings_type = getattr(importlib.import_module(f"{package}.settings"), settings_name)
        settings = load_settings(settings_type, service=service, nats_url=nats_url)
        units.append(importlib.import_module(f"{package}.service").unit(settings))
    return units


def up(demo: bool = False, exit_after_demo: bool = False) -> int:
    try:
        settings = load_settings(UpSettings)
    except ConfigError as exc:
        print(f"zloth up: configuration error: {exc}", file=sys.stderr)
        return 2
    # The demo's output is the point on a terminal: only warnings unless asked otherwise.
    level = settings.log_level if "ZLOTH_LOG_LEVEL" in os.environ else "warning"
    configure_logging(level, settings.log_format)
    outcome: dict[str, bool] = {"ok": True}

    async def main() -> None:
        outcome["ok"] = await _up(settings, demo, exit_after_demo)

    try:
        run_loop(main)
    except (ZlothError, OSError) as exc:
        print(f"zloth up: {exc}", file=sys.stderr)
        return 1
    return 0 if outcome["ok"] else 1


async def _up(settings: UpSettings, demo: bool, exit_after_demo: bool) -> bool:
    log = get_logger(service="up")
    server: NatsServer | None = None
    nats_url = settings.nats_url
    if not nats_url:
        server = NatsServer(settings.data_dir / "nats", port=settings.embedded_nats_port)
        nats_url = await server.start()
        log.info("embedded_nats_started", url=nats_url, store=str(settings.data_dir / "nats"))
    stopping = asyncio.Event()
    result = {"ok": True}
    base = f"http://{settings.host}:{settings.port}"

    started = asyncio.Event()

    async def ready(_: list[Service]) -> None:
        print(f"zloth is up: API {base}  (NATS {nats_url}, data {settings.data_dir})",
              flush=True)
        started.set()

    async def run_demo(stopping: asyncio.Event) -> None:
        await started.wait()
        try:
            result["ok"] = await demo_run(base, settings.data_dir)
        except (api.ApiError, httpx.HTTPError) as exc:
            print(f"demo failed: {exc}", flush=True)
            result["ok"] = False
        if exit_after_demo:
            stopping.set()
        else:
            print(f"\nzloth keeps running: try `zloth runs show <id> --diff` or {base}/v1/tasks;"
                  " Ctrl-C stops it.", flush=True)

    try:
        await run_services(settings, load_units(nats_url), nats_url, http_host=settings.host,
                           http_port=settings.port, ready=ready, stopping=stopping,
                           extra_tasks=[run_demo] if demo else [])
    finally:
        if server is not None:
            await server.stop()
    return result["ok"]


async def demo_run(base: str, data_dir: Path) -> bool:
    repo = await asyncio.to_thread(make_sample_repo, data_dir / "demo" / "sample-repo")
    print(f"\ndemo: {len(DEMO_EXECUTORS)} agents in parallel on {repo}\n", flush=True)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        await _wait_for_executors(client)
        return await api.run_and_follow(client, str(repo), DEMO_EXECUTORS, DEMO_INSTRUCTION)


async def _wait_for_executors(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(30):
        while True:
            listed: Any = await api.call(client, "GET", "/v1/executors")
            names = {e["name"] for e in listed.get("executors", [])}
            if set(DEMO_EXECUTORS) <= names:
                return
            await asyncio.sleep(0.2)


def make_sample_repo(path: Path) -> Path:
    """A small git repository with history, made once."""
    if (path / ".git").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    env = {"GIT_AUTHOR_NAME": "zloth demo", "GIT_AUTHOR_EMAIL": "demo@localhost",
           "GIT_COMMITTER_NAME": "zloth demo", "GIT_COMMITTER_EMAIL": "demo@localhost",
           "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(path)}

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    (path / "README.md").write_text("# sample\n\nA tiny project for the zloth demo.\n")
    (path / "src").mkdir(exist_ok=True)
    (path / "src" / "app.py").write_text('def greet(name):\n    return f"hello {name}"\n')
    git("add", "-A")
    git("commit", "-q", "-m", "initial commit")
    (path / "src" / "util.py").write_text("def add(a, b):\n    return a + b\n")
    git("add", "-A")
    git("commit", "-q", "-m", "add util")
    return path
