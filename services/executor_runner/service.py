"""Wire the executor-runner: one consumer per executor kind (the broker enforces each
kind's global concurrency), the cancel listener, and the executor announcements."""

from __future__ import annotations

import asyncio
import shutil
from functools import partial
from typing import Any

import msgspec

from schemas.executions import CancelRequested, ExecuteRun
from schemas.streams import CANCEL_BUCKET, EXECUTORS_BUCKET, LOGS, exec_consumer
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
from services.executor_runner.process import reap_leftovers
from services.executor_runner.runner import Runner
from services.executor_runner.settings import RunnerSettings


def select_executors(settings: RunnerSettings) -> dict[str, ExecutorSpec]:
    try:
        executors = load_executors(settings.executors_file)
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
    consumers: list[Consume[Any]] = [
        Consume(exec_consumer(name, spec.concurrency, settings.ack_wait_seconds), ExecuteRun,
                runner.on_execute, concurrency=spec.concurrency)
        for name, spec in executors.items()
    ]
    return Service(
        name=NAME,
        consumers=consumers,
        tasks=[partial(listen_for_cancels, runner), partial(announce, runner)],
        owned_streams=[LOGS],
        buckets=[CANCEL_BUCKET, EXECUTORS_BUCKET],
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
    """Tell the gateway which executors exist and whether their command is installed."""
    while not stopping.is_set():
        for name, spec in runner.executors.items():
            info = {
                "name": name,
                "concurrency": spec.concurrency,
                "output": spec.output,
                "command": spec.command[0],
                "installed": shutil.which(spec.command[0]) is not None,
                "runner": runner.runner_id,
            }
            await runner.bus.kv_put(EXECUTORS_BUCKET.name, name, msgspec.json.encode(info))
        await sleep_or_stop(stopping, runner.settings.announce_seconds)


def unit(settings: RunnerSettings) -> Unit:
    return Unit(name=NAME, package="services.executor_runner", build=partial(build, settings))
