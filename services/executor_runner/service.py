"""Wire the executor-runner: one consumer per executor kind (the broker enforces each
kind's global concurrency), the cancel listener, and the executor announcements."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from schemas.executions import CancelRequested, ExecuteRun
from schemas.streams import (
    CANCEL_BUCKET,
    CMD,
    EXECUTORS_BUCKET,
    LLM_BREAKER_BUCKET,
    LLM_CACHE_BUCKET,
    LOGS,
    exec_consumer,
)
from services.core.bus import Consume
from services.core.errors import ConfigError
from services.core.runtime import Deps, Service, Unit, sleep_or_stop
from services.core.telemetry import get_logger
from services.executor_runner import NAME
from services.executor_runner.executors import (
    ExecutorConfigError,
    ExecutorSpec,
    load_executors,
)
from services.executor_runner.llm import make_client
from services.executor_runner.process import reap_leftovers
from services.executor_runner.runner import Runner
from services.executor_runner.settings import RunnerSettings
from services.executor_runner.versions import installed, probe_all


def select_executors(settings: RunnerSettings) -> dict[str, ExecutorSpec]:
    try:
        executors = load_executors(settings.executors_file, settings.agents_bin)
    except ExecutorConfigError as exc:
        raise ConfigError(f"ZLOTH_EXECUTORS_FILE: {exc}") from None
    unknown = [name for name in settings.executors if name not in executors]
    if unknown:
        raise ConfigError(f"ZLOTH_EXECUTORS: unknown executor(s) {unknown}; "
                          f"defined: {sorted(executors)}")
    if settings.executors:
        executors = {name: executors[name] for name in settings.executors}
    return executors


async def build(settings: RunnerSettings, deps: Deps) -> Service:
    executors = select_executors(settings)
    reaped = await asyncio.to_thread(reap_leftovers, settings.pidfile_dir)
    if reaped:
        get_logger(service=NAME).warning("reaped_leftover_agents", pids=reaped)
    runner = Runner(deps.bus, deps.store, settings, executors, deps.instance_id)
    # versions are asked later, by `announce`: a CLI takes seconds to say its version
    runner.installed = {name: (installed(spec), None) for name, spec in executors.items()}
    missing = [name for name, (found, _) in runner.installed.items() if not found]
    if missing:  # announced as not installed; their runs wait for a runner that has them
        get_logger(service=NAME).warning("executors_not_installed", executors=missing)
    buckets = [CANCEL_BUCKET, EXECUTORS_BUCKET]
    on_stop: list[Callable[[], Awaitable[None]]] = []
    if any(spec.adapter == "patch" for spec in executors.values()):
        runner.llm = make_client(deps.bus, deps.instance_id)
        buckets += [LLM_CACHE_BUCKET, LLM_BREAKER_BUCKET]
        on_stop.append(runner.llm.aclose)
    consumers: list[Consume[Any]] = [
        Consume(exec_consumer(name, settings.subject_host, spec.concurrency,
                              settings.ack_wait_seconds),
                ExecuteRun, runner.on_execute, concurrency=spec.concurrency)
        for name, spec in executors.items()
        if name not in missing
    ]
    async def health() -> dict[str, Any]:
        """For `/v1/status`: this runner's host and each executor's agents vs its cap."""
        return {"ok": deps.bus.connected, "host": settings.subject_host,
                "executors": {name: {"running": runner.active[name],
                                     "concurrency": spec.concurrency}
                              for name, spec in executors.items() if name not in missing}}

    return Service(
        name=NAME,
        consumers=consumers,
        health=health,
        tasks=[partial(listen_for_cancels, runner), partial(announce, runner)],
        owned_streams=[LOGS],
        buckets=buckets,
        retired_consumers=[(CMD.name, f"exec-{name}") for name in executors],
        on_stop=on_stop,
    )


async def listen_for_cancels(runner: Runner, stopping: asyncio.Event) -> None:
    """Kill the agent of a canceled run if it runs here (the KV flag covers late starts)."""

    async def on_cancel(data: bytes) -> None:
        try:
            request = msgspec.json.decode(data, type=CancelRequested)
        except msgspec.DecodeError:
            return
        event = runner.cancels.get(request.run_id)
        if event is not None:
            event.set()

    unsubscribe = await runner.bus.listen(CancelRequested.subject_prefix, on_cancel)
    try:
        while not stopping.is_set():
            # A broadcast missed during a reconnect: the KV flag still says it.
            for run_id, event in list(runner.cancels.items()):
                if not event.is_set() and await runner.bus.kv_get(CANCEL_BUCKET.name, run_id):
                    event.set()
            await sleep_or_stop(stopping, 1.0)
    finally:
        await unsubscribe()


async def announce(runner: Runner, stopping: asyncio.Event) -> None:
    """Tell the gateway which executors exist, whether their program is installed on the
    runners, and its version (the key is per executor, shared by all runners: a runner
    without the program never overwrites the announcement of one that has it)."""
    runner.installed = await probe_all(dict(runner.executors))
    while not stopping.is_set():
        for name, spec in runner.executors.items():
            present, version = runner.installed.get(name, (False, None))
            info = {
                "name": name,
                "concurrency": spec.concurrency,
                "output": spec.output,
                "adapter": spec.adapter,
                "command": Path(spec.command[0]).name,
                "installed": present,
                "version": version,
                "pinned_version": spec.version,
                "runner": runner.runner_id,
            }
            if not present and await _installed_elsewhere(runner, name):
                continue
            await runner.bus.kv_put(EXECUTORS_BUCKET.name, name, msgspec.json.encode(info))
        await sleep_or_stop(stopping, runner.settings.announce_seconds)


async def _installed_elsewhere(runner: Runner, name: str) -> bool:
    raw = await runner.bus.kv_get(EXECUTORS_BUCKET.name, name)
    try:
        current = msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        return False
    return isinstance(current, dict) and current.get("installed") is True


def unit(settings: RunnerSettings) -> Unit:
    return Unit(name=NAME, package="services.executor_runner", build=partial(build, settings))
