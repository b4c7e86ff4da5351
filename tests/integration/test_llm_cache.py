"""The output cache in KV: whitespace-folded prompts share an entry, entries expire by
their TTL, they outlive the process that wrote them, and callers see hits reported."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from schemas.streams import LLM_CACHE_BUCKET
from services.core import metrics
from services.core.bus import Bus
from services.core.llm import LLMClient, Request, SecretStore, cache_key
from services.core.natsd import NatsServer
from tests.support.buses import wait_for
from tests.support.fake_llm import MASTER_KEY, FakeLLM, fake_settings, secret_store, settings_json
from tests.support.llm_replica import Replica


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    try:
        yield server
    finally:
        server.stop()



@pytest.fixture
async def store(bus: Bus) -> SecretStore:
    return await secret_store(bus)


def hits(provider: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "zloth_llm_cache_hits_total", {"provider": provider}) or 0.0


async def test_whitespace_variants_cost_one_provider_call(
    bus: Bus, store: SecretStore, fake: FakeLLM
) -> None:
    """Same prompt, different spacing and line breaks: the second answer is the cached
    first one, reported as cached, with zero provider attempts."""
    before = hits("openai")
    async with LLMClient(fake_settings(fake), bus, store) as client:
        first = await client.complete(
            Request(provider="openai", model="m", prompt="Fix  the\n\tbug in   foo.py"))
        second = await client.complete(
            Request(provider="openai", model="m", prompt=" Fix the bug\nin foo.py  "))
        other = await client.complete(
            Request(provider="openai", model="m", prompt="Fix the bug in foo.py",
                    temperature=0.9))
    assert fake.count() == 2  # the first and the one with other parameters
    assert (first.cached, first.attempts) == (False, 1)
    assert (second.cached, second.attempts, second.text) == (True, 0, first.text)
    assert not other.cached
    assert hits("openai") == before + 1


async def test_identical_concurrent_calls_share_one_provider_call(
    bus: Bus, store: SecretStore, fake: FakeLLM
) -> None:
    async with LLMClient(fake_settings(fake), bus, store) as client:
        answers = await asyncio.gather(*(client.complete(
            Request(provider="google", model="m", prompt="same question")) for _ in range(8)))
    assert fake.count() == 1
    assert sum(not a.cached for a in answers) == 1 and len({a.text for a in answers}) == 1


async def test_asking_for_variety_bypasses_the_cache(
    bus: Bus, store: SecretStore, fake: FakeLLM
) -> None:
    request = Request(provider="anthropic", model="m", prompt="a poem", cache=False)
    async with LLMClient(fake_settings(fake), bus, store) as client:
        answers = [await client.complete(request) for _ in range(2)]
    assert fake.count() == 2 and not any(a.cached for a in answers)
    assert await bus.kv_get_entry(LLM_CACHE_BUCKET.name, cache_key(request)) is None


async def test_an_expired_entry_costs_a_second_call(
    bus: Bus, store: SecretStore, fake: FakeLLM
) -> None:
    """TTL 1 s (the issue's default is 1 h; only the number differs): once the server
    has dropped the entry, the same prompt goes to the provider again."""
    request = Request(provider="anthropic", model="m", prompt="short-lived")
    async with LLMClient(fake_settings(fake, cache_ttl_seconds=1.0), bus, store) as client:
        await client.complete(request)
        assert (await client.complete(request)).cached
        await wait_for(lambda: _absent(bus, cache_key(request)), timeout=10, interval=0.1)
        again = await client.complete(request)
    assert not again.cached and fake.count() == 2


async def _absent(bus: Bus, key: str) -> bool:
    return await bus.kv_get_entry(LLM_CACHE_BUCKET.name, key) is None


async def test_the_cache_outlives_the_process_that_filled_it(
    nats_server: NatsServer, bus: Bus, store: SecretStore, fake: FakeLLM
) -> None:
    """One replica process answers and exits; a new process gets the answer from KV."""
    config = settings_json(fake_settings(fake))
    question = {"provider": "openai", "api": "chat", "model": "m", "prompt": "remember me"}
    first = await Replica.start(nats_server.url, config, MASTER_KEY)
    try:
        answer = await first.call(**question)
    finally:
        await first.stop()
    assert answer["ok"] and not answer["cached"] and first.proc.returncode == 0
    second = await Replica.start(nats_server.url, config, MASTER_KEY)
    try:
        again = await second.call(**question)
    finally:
        await second.stop()
    assert again["ok"] and again["cached"] and fake.count() == 1
