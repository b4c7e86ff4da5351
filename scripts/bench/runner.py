"""Executor-runner overhead around a trivial agent, and how many agents one runner holds.

Starts its own nats-server and one executor-runner in this process (no scheduler: the
bench publishes ExecuteRun itself and listens to the runner's events). Two parts:

- overhead: N sequential runs of `printf` (one result line): publish → ExecutionStarted
  → first log chunk → ExecutionFinished, p50/p95 of each step and of the whole;
- capacity: agents that print a line then sleep, started in steps up to --max-agents at
  once; at each step the runner's RSS and the per-agent increment;
- hold: N idle agents (`sleep`) supervised by run_agent directly (no NATS: only the
  process layer's cost) for --hold-seconds, and this process's CPU seconds per second
  (getrusage: all threads), once with one ProcTable per run (one /proc walk per run per
  tick: the cost before the shared table) and once with the loop's shared table, side by
  side in the same run. Prints JSON.

    .venv/bin/python scripts/bench/runner.py --runs 200 --max-agents 200
    .venv/bin/python scripts/bench/runner.py --parts hold --hold-agents 100,250
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from schemas.executions import CancelRequested, ExecuteRun  # noqa: E402
from services.core.bus import Bus  # noqa: E402
from services.core.natsd import NatsServer  # noqa: E402
from services.core.runtime import Service, run_services  # noqa: E402
from services.core.telemetry import configure_logging  # noqa: E402
from services.executor_runner.executors import ExecutorSpec  # noqa: E402
from services.executor_runner.process import Limits, run_agent  # noqa: E402
from services.executor_runner.proctable import ProcTable  # noqa: E402
from services.executor_runner.service import unit  # noqa: E402
from services.executor_runner.settings import RunnerSettings  # noqa: E402

RESULT = '{"type":"result","summary":"noop","session_id":"s"}'


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"n": len(ordered), "p50_ms": round(pick(0.5) * 1000, 2),
            "p95_ms": round(pick(0.95) * 1000, 2),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2)}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Watch:
    """Arrival times of the runner's events per run id."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, str], float] = {}
        self.changed = asyncio.Event()

    def on(self, kind: str) -> Callable[[bytes], Awaitable[None]]:
        async def record(data: bytes) -> None:
            run_id = msgspec.json.decode(data)["run_id"]
            self.times.setdefault((kind, run_id), time.perf_counter())
            self.changed.set()
        return record

    async def wait(self, kind: str, run_ids: list[str], timeout: float = 120) -> None:
        async with asyncio.timeout(timeout):
            while not all((kind, r) in self.times for r in run_ids):
                self.changed.clear()
                await self.changed.wait()


HOST = "bench"  # the runner's host: commands name the host of their workspace


def command(executor: str, run_id: str, workspace: Path) -> ExecuteRun:
    return ExecuteRun(run_id=run_id, task_id="bench", attempt=1, executor=executor,
                      workspace_path=str(workspace), base_sha="0" * 40, instruction="x",
                      host=HOST)


async def overhead(bus: Bus, watch: Watch, runs: int, workspace: Path) -> dict[str, Any]:
    steps: dict[str, list[float]] = {"publish_to_started": [], "started_to_first_log": [],
                                     "first_log_to_finished": [], "total": []}
    for n in range(runs):
        run_id = f"run_o{n}"
        sent = time.perf_counter()
        await bus.publish(command("trivial", run_id, workspace))
        await watch.wait("finished", [run_id])
        await watch.wait("log", [run_id], 5)
        started, log, done = (watch.times[(k, run_id)] for k in ("started", "log", "finished"))
        steps["publish_to_started"].append(started - sent)
        steps["started_to_first_log"].append(log - started)
        steps["first_log_to_finished"].append(max(0.0, done - log))
        steps["total"].append(done - sent)
    return {name: percentiles(values) for name, values in steps.items()}


async def capacity(bus: Bus, watch: Watch, max_agents: int, workspace: Path
                   ) -> list[dict[str, float]]:
    """Start sleeping agents in steps; each has printed its line when it counts."""
    points = [{"agents": 0, "runner_rss_mib": round(rss_mib(), 1)}]
    started = 0
    step = max(1, max_agents // 5)
    while started < max_agents:
        batch = [f"run_c{started + i}" for i in range(min(step, max_agents - started))]
        sent = time.perf_counter()
        for run_id in batch:
            await bus.publish(command("sleeper", run_id, workspace))
        await watch.wait("log", batch)
        started += len(batch)
        await asyncio.sleep(1.0)  # a few tracker polls at this level
        points.append({"agents": started, "runner_rss_mib": round(rss_mib(), 1),
                       "step_start_s": round(time.perf_counter() - sent, 2)})
    everyone = [f"run_c{n}" for n in range(started)]
    for run_id in everyone:  # a cancel kills each agent's group; the runner reports it
        await bus.publish(CancelRequested(run_id=run_id))
    await watch.wait("finished", everyone)
    return points


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def host_processes() -> int:
    return sum(1 for entry in Path("/proc").iterdir() if entry.name.isdigit())


async def hold_case(agents: int, seconds: float, shared: bool) -> dict[str, Any]:
    """`agents` idle agents under supervision; CPU s/s of this process while they idle."""
    limits = Limits(idle_seconds=3600, kill_grace_seconds=0.5)
    tables = [ProcTable()] if shared else [ProcTable() for _ in range(agents)]
    cancel, up = asyncio.Event(), asyncio.Event()
    ready = 0

    async def on_line(stream: str, text: str) -> None:
        nonlocal ready
        ready += 1
        if ready == agents:
            up.set()

    runs = [asyncio.create_task(run_agent(
        ["sh", "-c", "echo up; exec sleep 600"], Path(tempfile.gettempdir()),
        {"PATH": "/usr/bin:/bin"},
        on_line, limits, cancel, table=tables[n % len(tables)])) for n in range(agents)]
    try:
        await asyncio.wait_for(up.wait(), 120)
        # past spawning and every table's first tick (which reads every environment once)
        for _ in range(240):  # a table has no event to wait on; give up after ~2 min
            if min(t.scans for t in tables) >= 2:
                break
            await asyncio.sleep(limits.tree_poll_seconds)
        scans0, reads0 = (sum(t.scans for t in tables), sum(t.markers.reads for t in tables))
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu1, t1 = cpu_seconds(), time.perf_counter()
        scans1, reads1 = (sum(t.scans for t in tables), sum(t.markers.reads for t in tables))
        processes = host_processes()
    finally:
        cancel.set()
        await asyncio.wait_for(asyncio.gather(*runs), 120)
    elapsed = t1 - t0
    return {"agents": agents, "table": "shared" if shared else "per_run",
            "host_processes": processes, "seconds": round(elapsed, 2),
            "runner_cpu_s_per_s": round((cpu1 - cpu0) / elapsed, 4),
            "proc_walks_per_s": round((scans1 - scans0) / elapsed, 1),
            "environ_reads_per_s": round((reads1 - reads0) / elapsed, 1)}


async def hold(counts: list[int], seconds: float) -> list[dict[str, Any]]:
    results = []
    for agents in counts:
        old = await hold_case(agents, seconds, shared=False)
        new = await hold_case(agents, seconds, shared=True)
        ratio = old["runner_cpu_s_per_s"] / max(new["runner_cpu_s_per_s"], 1e-6)
        results.append({"agents": agents, "per_run": old, "shared": new,
                        "cpu_ratio_per_run_over_shared": round(ratio, 1)})
    return results


async def main(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("warning", "json")
    result: dict[str, Any] = {}
    if {"overhead", "capacity"} & set(args.parts):
        result.update(await with_runner(args))
    if "hold" in args.parts:  # last: the runner above has stopped, and peak RSS is its own
        counts = [int(n) for n in args.hold_agents.split(",")]
        result["hold"] = await hold(counts, args.hold_seconds)
    return result


async def with_runner(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="zloth-bench-runner-") as tmp:
        root = Path(tmp)
        server = NatsServer(root / "nats")
        await server.start()
        workspace = root / "ws"
        workspace.mkdir()
        executors = root / "executors.json"
        executors.write_bytes(msgspec.json.encode([
            ExecutorSpec(name="trivial", command=["printf", "%s\\n", RESULT], output="jsonl",
                         concurrency=1),
            ExecutorSpec(name="sleeper", command=["sh", "-c", "echo up; exec sleep 600"],
                         concurrency=args.max_agents, idle_timeout_seconds=3600),
        ]))
        settings = RunnerSettings(nats_url=server.url, data_dir=root / "data",
                                  executors_file=executors, announce_seconds=3600,
                                  host_id=HOST)
        stopping, ready = asyncio.Event(), asyncio.Event()

        async def on_ready(_: list[Service]) -> None:
            ready.set()

        runner = asyncio.create_task(run_services(
            settings, [unit(settings)], server.url, ready=on_ready, stopping=stopping,
            drain_seconds=30))
        bus = await Bus.connect(server.url, name="bench-runner")
        watch = Watch()
        for kind, subject in (("started", "zloth.evt.exec.started"),
                              ("finished", "zloth.evt.exec.finished"), ("log", "zloth.logs.>")):
            await bus.listen(subject, watch.on(kind))
        try:
            await asyncio.wait_for(ready.wait(), 30)
            result: dict[str, Any] = {}
            if "overhead" in args.parts:
                result["overhead"] = await overhead(bus, watch, args.runs, workspace)
            if "capacity" in args.parts:
                result["capacity"] = await capacity(bus, watch, args.max_agents, workspace)
            result["peak_rss_mib"] = round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        finally:
            stopping.set()  # drain: the runner kills the sleeping agents
            await asyncio.wait_for(runner, 60)
            await bus.close()
            await server.stop(kill=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--max-agents", type=int, default=200)
    parser.add_argument("--parts", nargs="+", choices=["overhead", "capacity", "hold"],
                        default=["overhead", "capacity", "hold"])
    parser.add_argument("--hold-agents", default="100,250",
                        help="comma-separated agent counts for the hold part")
    parser.add_argument("--hold-seconds", type=float, default=10.0)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
