"""Fault injection: 20 % of provider requests answer 429 (with and without Retry-After)
or 5xx, hang past the read timeout, cut the stream mid-body, or end it without its final
event. Every call succeeds or fails cleanly (an LLMError) within its deadline; no call
makes more requests than the attempt cap; no retry comes before its Retry-After.

The breaker is set out of reach here (a flaky provider is not a down one; the breaker has
its own test), and read timeouts are 0.5 s so that hangs cost little test time.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator

import pytest

from services.core import metrics
from services.core.bus import Bus
from services.core.llm import LLMClient, LLMError, Request, Response
from services.core.llm.wire import REQUEST_STATUSES
from services.core.natsd import NatsServer
from tests.support.fake_llm import FakeLLM, Fault, Hit, fake_settings, secret_store

CALLS = 120
DEADLINE = 6.0
MAX_ATTEMPTS = 4
FAULTS = [Fault("429", retry_after=1.0), Fault("429"), Fault("5xx", status=500),
          Fault("5xx", status=503), Fault("5xx", status=529), Fault("hang", hang=5.0),
          Fault("cut"), Fault("truncate")]


def plan(attempt: int, prompt: str) -> Fault:
    # Seeded by prompt and attempt: the same faults whatever order requests arrive in.
    rng = random.Random(f"{prompt}/{attempt}")
    return rng.choice(FAULTS) if rng.random() < 0.20 else Fault()


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM(plan=plan).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(nats_server: NatsServer, fake: FakeLLM) -> AsyncIterator[LLMClient]:
    bus = await Bus.connect(nats_server.url, name="test-llm")
    settings = fake_settings(
        fake, max_attempts=MAX_ATTEMPTS, breaker_failures=10_000,
        provider={"read_timeout": 0.5, "attempt_timeout": 1.0, "max_concurrency": 64})
    async with LLMClient(settings, bus, await secret_store(bus)) as client:
        yield client
    await bus.close()


def request(n: int) -> Request:
    provider, api = [("openai", "responses"), ("openai", "chat"), ("anthropic", ""),
                     ("google", "")][n % 4]
    return Request(provider=provider, api=api, model="m", prompt=f"task {n}", cache=False,
                   stream=n % 3 != 0, deadline_seconds=DEADLINE)


async def timed(client: LLMClient, n: int) -> tuple[Response | LLMError, float]:
    started = time.monotonic()
    try:
        result: Response | LLMError = await client.complete(request(n))
    except LLMError as exc:  # anything else is not a clean failure: let it fail the test
        result = exc
    return result, time.monotonic() - started


def retries() -> float:
    return sum(sample.value for metric in metrics.llm_retries_total.collect()
               for sample in metric.samples if sample.name.endswith("_total"))


async def test_every_call_ends_cleanly_within_its_deadline(
    client: LLMClient, fake: FakeLLM
) -> None:
    retried_before = retries()
    async with asyncio.timeout(DEADLINE + 10):
        outcomes = await asyncio.gather(*(timed(client, n) for n in range(CALLS)))
    by_prompt: dict[str, list[Hit]] = defaultdict(list)
    for hit in fake.hits():
        by_prompt[hit.prompt].append(hit)

    assert {h.fault for h in fake.hits()} >= {"ok", "429", "5xx", "hang", "cut", "truncate"}
    assert all(elapsed <= DEADLINE + 0.25 for _, elapsed in outcomes)
    assert all(len(hits) <= MAX_ATTEMPTS for hits in by_prompt.values())
    for n, (result, _) in enumerate(outcomes):
        if isinstance(result, Response):
            assert result.attempts == len(by_prompt[f"task {n}"])
            assert by_prompt[f"task {n}"][-1].fault == "ok"
    succeeded = sum(isinstance(r, Response) for r, _ in outcomes)
    assert succeeded >= 0.95 * CALLS
    assert sum(len(hits) > 1 for hits in by_prompt.values()) >= 0.1 * CALLS  # retries ran
    assert retries() - retried_before == len(fake.hits()) - CALLS  # and were counted

    honoured = 0
    for hits in by_prompt.values():
        for earlier, later in itertools.pairwise(hits):
            if earlier.retry_after is not None:
                assert later.at >= earlier.answered_at + earlier.retry_after
                honoured += 1
    assert honoured > 0


@pytest.mark.parametrize(
    ("fault", "deadline", "expected_hits", "kinds"),
    [
        (Fault("5xx", status=502), 6.0, {MAX_ATTEMPTS}, {"server_error"}),
        (Fault("429", retry_after=5.0), 2.0, {1}, {"rate_limited"}),
        # 0.5 s read timeouts plus backoff: two or three attempts fit in 1.5 s.
        (Fault("hang", hang=5.0), 1.5, {2, 3}, {"timeout", "deadline"}),
    ],
    ids=["always-5xx", "retry-after-past-deadline", "always-hangs"],
)
async def test_a_hopeless_call_gives_up_cleanly(
    client: LLMClient, fake: FakeLLM, fault: Fault, deadline: float, expected_hits: set[int],
    kinds: set[str],
) -> None:
    """Always 5xx: exactly the attempt cap. A Retry-After beyond the deadline: give up at
    once and say when to come back, rather than sleep into the deadline. Always hanging:
    the deadline ends it, on time."""
    fake.plan = lambda attempt, prompt: fault
    counted = {kind: requests_with(kind) for kind in kinds}
    started = time.monotonic()
    with pytest.raises(LLMError) as caught:
        await client.complete(Request(provider="anthropic", model="m", prompt="hopeless",
                                      cache=False, deadline_seconds=deadline))
    elapsed = time.monotonic() - started
    assert elapsed <= deadline + 0.25
    assert len(fake.hits()) in expected_hits
    assert not caught.value.non_retryable and getattr(caught.value, "kind", "") in kinds
    if fault.retry_after:
        assert elapsed < 0.5 and caught.value.next_retry_delay >= fault.retry_after
    # every answered attempt is counted under the status the alerts query (ops/alerts.yml)
    added = sum(requests_with(kind) - before for kind, before in counted.items())
    assert added >= min(expected_hits) - (1 if "timeout" in kinds else 0)
    assert kinds & set(REQUEST_STATUSES)


def requests_with(status: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "zloth_llm_requests_total", {"provider": "anthropic", "status": status}) or 0.0
