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
from pathlib import Path

import msgspec

from schemas.executions import ExecuteRun
from schemas.streams import CMD
from services.core.bus import Bus
from services.core.natsd import NatsServer
from services.executor_runner.executors import ExecutorSpec

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


async def wait_for_line(path: Path, text: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not (path.exists() and text in path.read_text(errors="replace")):
            await asyncio.sleep(0.1)


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
    for n in (1, 2):
        env = {**os.environ, "ZLOTH_NATS_URL": nats_server.url, "ZLOTH_LOG_FORMAT": "json",
               "ZLOTH_DATA_DIR": str(tmp_path / f"runner{n}"),
               "ZLOTH_EXECUTORS_FILE": str(executors), "ZLOTH_ANNOUNCE_SECONDS": "1"}
        out = (tmp_path / f"runner{n}.log").open("wb")
        runners.append(subprocess.Popen([sys.executable, "-m", "services.executor_runner"],
                                        env=env, stdout=out, stderr=subprocess.STDOUT))
        out.close()
    bus = await Bus.connect(nats_server.url, name="concurrency-test")
    try:
        for n in (1, 2):
            await wait_for_line(tmp_path / f"runner{n}.log", "services_started")
        await bus.ensure_stream(CMD, owner=False)
        for i in range(RUNS):  # the slow kind first: the fast one must not queue behind it
            for kind in ("slow", "fast"):
                await bus.publish(ExecuteRun(
                    run_id=f"run_{kind}{i}", task_id="task_1", attempt=1, executor=kind,
                    workspace_path=str(workspace), base_sha="0" * 40, instruction="x"))
        async with asyncio.timeout(60):
            while sum(1 for line in log.read_text().splitlines()
                      if '"end"' in line) < 2 * RUNS if log.exists() else True:
                await asyncio.sleep(0.1)
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
