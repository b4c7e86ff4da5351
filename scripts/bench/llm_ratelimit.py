"""429 rate and completion time of 1,000 LLM calls with and without the client's limiter.

A fake provider (tests/support/fake_llm.py) refills N requests per window at a fixed
rate (a token bucket of N, as OpenAI and Anthropic document theirs) and answers 429 with
Retry-After above it. The same client drives the same calls three times in one run, on
one nats-server, each against a fresh provider: `with_limiter` (set to the provider's
limit, reading its rate-limit headers, pausing everyone on a Retry-After),
`headers_only` (no configured limit: headers and shared Retry-After pauses alone), and
`without_limiter` (`rate_limiting` off: only the concurrency cap, as the first
generation). Retries with backoff, honouring Retry-After, run in all three. The
window is scaled from a minute to `--window` seconds. The client's burst (`--burst`, a
tenth of the limit) lets it bank the few milliseconds each limiter sleep overshoots on a
busy loop; with a burst of 1 those are lost, about 30 % of throughput at these rates.
The client costs a few ms of CPU per call (mostly httpcore's pool), so keep the provider's
rate well below what one process can send. Prints JSON; compare ratios, not seconds.

    .venv/bin/python scripts/bench/llm_ratelimit.py --calls 1000 --limit 50 --window 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.core.bus import Bus  # noqa: E402
from services.core.llm import LLMClient, LLMError, Request, SecretStore  # noqa: E402
from services.core.natsd import NatsServer  # noqa: E402
from services.core.telemetry import configure_logging  # noqa: E402
from tests.support.fake_llm import FakeProcess, fake_settings, secret_store  # noqa: E402


async def drive(bus: Bus, store: SecretStore, args: argparse.Namespace, mode: str
                ) -> dict[str, Any]:
    fake = await FakeProcess.start(limit=args.limit, window=args.window, bucket=True,
                                   latency=args.latency)
    provider: dict[str, Any] = {"max_concurrency": args.concurrency, "attempt_timeout": 30.0,
                                "read_timeout": 30.0, "rate_limiting": mode != "none"}
    if mode == "limiter":
        provider.update(requests_per_window=args.limit, window_seconds=args.window,
                        burst=args.burst)
    settings = fake_settings(fake, provider=provider, max_attempts=args.attempts,
                             backoff_base=0.2, backoff_max=5.0, deadline_seconds=600.0,
                             max_retry_seconds=600.0, breaker_failures=10_000)

    async def one(n: int) -> bool:
        request = Request(provider="openai", model="m", prompt=f"bench call {n}", cache=False)
        try:
            await client.complete(request)
        except LLMError:
            return False
        return True

    try:
        async with LLMClient(settings, bus, store) as client:
            started = time.monotonic()
            results = await asyncio.gather(*(one(n) for n in range(args.calls)))
            seconds = time.monotonic() - started
    finally:
        hits = await fake.stop()
    rejected = sum(h.status == 429 for h in hits)
    return {
        "seconds": round(seconds, 2),
        "calls_ok": sum(results),
        "calls_failed": len(results) - sum(results),
        "ok_calls_per_second": round(sum(results) / seconds, 2),
        "provider_requests": len(hits),
        "responses_429": rejected,
        "rate_429": round(rejected / max(1, len(hits)), 4),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("error", "json")  # the JSON report alone on stdout
    with tempfile.TemporaryDirectory(prefix="zloth-bench-llm-") as tmp:
        server = NatsServer(Path(tmp) / "nats")
        await server.start()
        bus = await Bus.connect(server.url, name="bench-llm")
        try:
            store = await secret_store(bus)
            with_limiter = await drive(bus, store, args, "limiter")
            headers_only = await drive(bus, store, args, "headers")
            without = await drive(bus, store, args, "none")
        finally:
            await bus.close()
            await server.stop(kill=True)
    ideal = args.calls / args.limit * args.window
    return {
        "calls": args.calls,
        "provider_limit": {"requests": args.limit, "window_seconds": args.window,
                           "answer_latency_seconds": args.latency},
        "client": {"max_concurrency": args.concurrency, "max_attempts": args.attempts,
                   "burst": args.burst},
        "ideal_seconds": round(ideal, 2),  # every call at the provider's rate
        "with_limiter": with_limiter,
        "headers_only": headers_only,
        "without_limiter": without,
        "goal_rate_429_below": 0.01,
        "seconds_with_over_without": round(with_limiter["seconds"] / without["seconds"], 3),
        "seconds_with_over_ideal": round(with_limiter["seconds"] / ideal, 3),
        "ok_rate_with_over_without": round(
            with_limiter["ok_calls_per_second"] / without["ok_calls_per_second"], 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=50, help="provider requests per window")
    parser.add_argument("--window", type=float, default=1.0, help="seconds (a minute, scaled)")
    parser.add_argument("--latency", type=float, default=0.05, help="provider answer time")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--burst", type=int, default=5)
    parser.add_argument("--attempts", type=int, default=5)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
