"""Dispatch latency: gateway accept → agent start, against the raw JetStream round trip.

Starts its own nats-server and the whole stack in one process (as `zloth up`), submits
N runs of the `noop` executor at a fixed rate through the HTTP API, and reads each run's
`accepted_at` and `agent_started_at` back. In the same run, on the same server, it
measures the raw publish → fetch round trip of a pull consumer. Prints JSON.

    .venv/bin/python scripts/bench/dispatch.py --runs 1000 --rate 20
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
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import uvloop

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from schemas.streams import StreamSpec  # noqa: E402
from services.core.bus import Bus  # noqa: E402
from services.core.natsd import NatsServer  # noqa: E402
from services.core.telemetry import configure_logging  # noqa: E402
from tests.support.gitrepo import make_origin  # noqa: E402
from tests.support.stack import inprocess_stack, wait_for_executors  # noqa: E402


def _cpu() -> dict[str, float]:
    """CPU seconds of this process (every service, in `zloth up` shape) and of its
    children (git, agents, launchers) so far."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"services": me.ru_utime + me.ru_stime, "subprocesses": kids.ru_utime + kids.ru_stime}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "n": len(ordered),
        "p50_ms": round(pick(0.50) * 1000, 3),
        "p95_ms": round(pick(0.95) * 1000, 3),
        "p99_ms": round(pick(0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


async def raw_round_trip(url: str, samples: int) -> list[float]:
    """publish → fetch of one message through a durable pull consumer, one at a time."""
    from schemas.streams import ConsumerSpec

    bus = await Bus.connect(url, name="bench-raw")
    await bus.ensure_stream(StreamSpec(name="BENCH", subjects=["bench.>"],
                                       retention="workqueue"))
    spec = ConsumerSpec(stream="BENCH", durable="bench", filter_subject="bench.>")
    await bus.ensure_consumer(spec)
    sub = await bus._pull(spec)  # the bench measures the bus's own pull path
    times: list[float] = []
    try:
        for n in range(samples):
            fetch = asyncio.create_task(sub.fetch(1, timeout=5))
            await asyncio.sleep(0.002)  # the pull request is waiting, as a worker's is
            started = time.perf_counter()
            await bus.publish_raw(f"bench.{n}", b"x" * 200, msg_id=f"b{n}")
            msgs = await fetch
            times.append(time.perf_counter() - started)
            await msgs[0].ack()
    finally:
        await bus.close()
    return times


async def submit_all(client: httpx.AsyncClient, repo: Path, runs: int, rate: float
                     ) -> list[str]:
    repo_doc = (await client.post("/v1/repos", json={"url": str(repo)})).json()
    task = (await client.post("/v1/tasks", json={"repo_id": repo_doc["id"]})).json()
    ids: list[str] = []
    started = time.perf_counter()
    for n in range(runs):
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        response = await client.post(f"/v1/tasks/{task['id']}/runs",
                                     json={"instruction": f"noop {n}", "executors": ["noop"]})
        response.raise_for_status()
        ids.extend(run["id"] for run in response.json()["runs"])
    return ids


async def collect(client: httpx.AsyncClient, ids: list[str], timeout: float
                  ) -> list[dict[str, Any]]:
    pending = set(ids)
    done: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(timeout):
        while pending:
            for run_id in list(pending)[:200]:
                run = (await client.get(f"/v1/runs/{run_id}", params={"diff": "0"})).json()
                if run["state"] in ("succeeded", "failed", "canceled"):
                    done[run_id] = run
                    pending.discard(run_id)
            await asyncio.sleep(0.2)
    return [done[i] for i in ids]


async def main(runs: int, rate: float, raw_samples: int) -> dict[str, Any]:
    configure_logging("warning", "json")
    with tempfile.TemporaryDirectory(prefix="zloth-bench-") as tmp:
        base = Path(tmp)
        server = NatsServer(base / "nats")
        url = await server.start()
        try:
            raw = await raw_round_trip(url, raw_samples)
            repo = make_origin(base / "origin", files=20, commits=2)
            async with inprocess_stack(url, base / "data", ZLOTH_LOG_LEVEL="warning") as client:
                await wait_for_executors(client, ("noop",))
                began = time.perf_counter()
                usage_before = _cpu()
                ids = await submit_all(client, repo, runs, rate)
                final = await collect(client, ids, timeout=max(120.0, runs / rate * 4))
                elapsed = time.perf_counter() - began
                usage_after = _cpu()
        finally:
            await server.stop()
    dispatch = [
        (datetime.fromisoformat(r["agent_started_at"])
         - datetime.fromisoformat(r["accepted_at"])).total_seconds()
        for r in final if r["agent_started_at"]
    ]
    def span(start: str, end: str) -> list[float]:
        return [(datetime.fromisoformat(r[end]) - datetime.fromisoformat(r[start]))
                .total_seconds() for r in final if r[start] and r[end]]

    states: dict[str, int] = {}
    for run in final:
        states[run["state"]] = states.get(run["state"], 0) + 1
    a = percentiles(dispatch)
    b = percentiles(raw)
    cpu = {k: round((usage_after[k] - usage_before[k]) / max(1, runs) * 1000, 2)
           for k in usage_after}
    return {
        "benchmark": "dispatch",
        "cpu_ms_per_run": cpu,
        "runs": runs,
        "submit_rate_per_s": rate,
        "states": states,
        "wall_seconds": round(elapsed, 2),
        "a_accept_to_agent_start": a,
        "a1_accept_to_scheduler": percentiles(span("accepted_at", "queued_at")),
        "a2_scheduler_to_agent_start": percentiles(span("queued_at", "agent_started_at")),
        "b_raw_jetstream_publish_to_fetch": b,
        "ratio_a_over_b": {k: round(a[k] / b[k], 1) for k in ("p50_ms", "p95_ms", "p99_ms")},
        "first_generation_poll_wait_ms": 1000,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="submissions per second")
    parser.add_argument("--raw-samples", type=int, default=1000)
    args = parser.parse_args()
    # uvloop, as `zloth up` runs (asyncio's default loop starts a thread per subprocess).
    result = uvloop.run(main(args.runs, args.rate, args.raw_samples))
    print(json.dumps(result, indent=2))
