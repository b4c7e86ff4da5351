"""Two executor-runner processes share each executor kind's global cap (the consumer's
max_ack_pending): no more than N agents of a kind ever run at once across both, while
another kind keeps flowing. Agents record their own start/end and parent (the runner)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import msgspec

from schemas.executions import ExecuteRun
from schemas.streams import CMD
from services.core.bus import Bus
from services.core.natsd import NatsServer
from services.executor_runner.executors import ExecutorSpec
from tests.support.stack import free_port

PROBE = textwrap.dedent("""
    import json, os, sys, time
    def mark(what):
        with open(os.environ["PROBE_LOG"], "a") as f:
            f.write(json.dumps({"kind": sys.argv[1], "what": what, "t": time.time(),
                                "runner": os.getppid()}) + "\\n")
    mark("start")
    print('{"type":"message","text":"working"}', flush=True)
    time.sleep(float(sys.argv[2]))
    mark("end")
""")
SLOW_CAP, FAST_CAP, RUNS = 2, 4, 8


HOST = "h1"


def spec(name: str, cap: int, seconds: float, log: Path) -> ExecutorSpec:
    return ExecutorSpec(name=name, command=[sys.executable, "-c", PROBE, name, str(seconds)],
                        output="jsonl", concurrency=cap, env={"PROBE_LOG": str(log)})


def max_overlap(events: list[dict[str, object]], kind: str) -> int:
    running = peak = 0
    for event in sorted((e for e in events if e["kind"] == kind),
                        key=lambda e: (e["t"], e["what"] == "start")):  # ends first on a tie
        running += 1 if event["what"] == "start" else -1
        peak = max(peak, running)
    return peak


def count(log: Path, kind: str, what: str) -> int:
    lines = log.read_text().splitlines() if log.exists() else []
    return sum(1 for line in lines if json.loads(line)["kind"] == kind
               and json.loads(line)["what"] == what)


async def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def start_runner(runners: list[subprocess.Popen[bytes]], nats_url: str,
                       executors: Path, tmp_path: Path) -> None:
    n = len(runners) + 1
    env = {**os.environ, "ZLOTH_NATS_URL": nats_url, "ZLOTH_LOG_FORMAT": "json",
           "ZLOTH_DATA_DIR": str(tmp_path / f"runner{n}"),
           "ZLOTH_EXECUTORS_FILE": str(executors), "ZLOTH_ANNOUNCE_SECONDS": "1",
           "ZLOTH_HOST_ID": HOST,  # two replicas on one host share its consumer and cap
           "ZLOTH_METRICS_PORT": str(free_port())}
    log = tmp_path / f"runner{n}.log"
    with log.open("wb") as out:
        runners.append(subprocess.Popen([sys.executable, "-m", "services.executor_runner"],
                                        env=env, stdout=out, stderr=subprocess.STDOUT))
    await wait_for(lambda: "services_started" in log.read_text(errors="replace"), 30)


async def test_two_runners_never_exceed_a_kinds_cap_and_other_kinds_flow(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    log = tmp_path / "probe.jsonl"
    executors = tmp_path / "executors.json"
    executors.write_bytes(msgspec.json.encode([
        spec("slow", SLOW_CAP, 1.0, log), spec("fast", FAST_CAP, 0.2, log)]))
    workspace = tmp_path / "ws"
    workspace.mkdir()
    runners: list[subprocess.Popen[bytes]] = []
    bus = await Bus.connect(nats_server.url, name="concurrency-test")
    try:
        await start_runner(runners, nats_server.url, executors, tmp_path)
        await bus.ensure_stream(CMD, owner=False)
        for i in range(RUNS):  # the slow kind first: the fast one must not queue behind it
            for kind in ("slow", "fast"):
                await bus.publish(ExecuteRun(
                    run_id=f"run_{kind}{i}", task_id="task_1", attempt=1, executor=kind,
                    workspace_path=str(workspace), base_sha="0" * 40, instruction="x",
                    host=HOST))
        # runner 1 holds the whole slow cap; runner 2 comes up and runner 1 drains away,
        # so for a while both run slow agents, and the cap still holds across them
        await wait_for(lambda: count(log, "slow", "start") >= SLOW_CAP)
        await start_runner(runners, nats_server.url, executors, tmp_path)
        runners[0].send_signal(signal.SIGTERM)
        await wait_for(lambda: count(log, "slow", "end") + count(log, "fast", "end") == 2 * RUNS)
    finally:
        await bus.close()
        for proc in runners:
            proc.send_signal(signal.SIGTERM)
        for proc in runners:
            proc.wait(timeout=30)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert max_overlap(events, "slow") == SLOW_CAP  # reached, never exceeded
    assert 2 < max_overlap(events, "fast") <= FAST_CAP
    assert {e["runner"] for e in events} == {p.pid for p in runners}  # both runners worked
    last_fast_end = max(e["t"] for e in events if e["kind"] == "fast" and e["what"] == "end")
    last_slow_start = max(e["t"] for e in events if e["kind"] == "slow" and e["what"] == "start")
    assert last_fast_end < last_slow_start  # the fast kind never waited for the slow one
