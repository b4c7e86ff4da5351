"""Each provider's wire format through real HTTP against the fake provider: JSON and
SSE, the API key from the encrypted store in the right header, 4xx never retried."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

import services.core.llm as llm
from services.core.bus import Bus
from services.core.llm import LLMClient, ProviderRejected, Request, as_handler_control
from services.core.natsd import NatsServer
from tests.support.fake_llm import API_KEY, FakeLLM, fake_settings, secret_store


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(nats_server: NatsServer, fake: FakeLLM) -> AsyncIterator[LLMClient]:
    bus = await Bus.connect(nats_server.url, name="test-llm")
    store = await secret_store(bus)
    async with LLMClient(fake_settings(fake), bus, store) as client:
        yield client
    await bus.close()


CASES = [("openai", "responses"), ("openai", "chat"), ("anthropic", ""), ("google", "")]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(("provider", "api"), CASES, ids=[f"{p}-{a}" for p, a in CASES])
async def test_each_wire_format_round_trips(
    client: LLMClient, fake: FakeLLM, provider: str, api: str, stream: bool
) -> None:
    """The fake answers in the provider's format; the client reassembles text and usage,
    and the request went to the provider's own endpoint with its own auth header."""
    prompt = f"say hello {provider} {api} {stream}"
    request = Request(provider=provider, api=api if provider == "openai" else "", model="m",
                      prompt=prompt, system="be brief", max_tokens=50, stream=stream,
                      temperature=0.2, cache=False)
    response = await client.complete(request)
    assert response.text.startswith("reply ") and response.text.endswith(f"to {prompt[:24]}")
    assert response.usage.input == len(prompt) // 4 and response.usage.output > 0
    assert (response.provider, response.attempts, response.cached) == (provider, 1, False)
    [hit] = fake.hits()
    assert (hit.provider, hit.stream, hit.status) == (provider, stream, 200)
    assert hit.api == (api or {"anthropic": "messages", "google": "generate"}[provider])


async def test_a_refused_request_is_not_retried(
    nats_server: NatsServer, fake: FakeLLM
) -> None:
    """A wrong API key is a 401: one request, a non-retryable error, and a job handler
    turns it into Reject, not Retry."""
    bus = await Bus.connect(nats_server.url, name="test-llm")
    store = await secret_store(bus, api_key="sk-wrong-key-000000000000")
    async with LLMClient(fake_settings(fake), bus, store) as client:
        with pytest.raises(ProviderRejected) as caught:
            await client.complete(Request(provider="openai", model="m", prompt="hi"))
    await bus.close()
    assert caught.value.status == 401 and caught.value.non_retryable
    assert "sk-wrong-key" not in str(caught.value)
    assert len(fake.hits()) == 0 and fake.echoed_keys == 1
    assert type(as_handler_control(caught.value)).__name__ == "Reject"


async def test_a_missing_key_fails_before_any_request(
    nats_server: NatsServer, fake: FakeLLM
) -> None:
    bus = await Bus.connect(nats_server.url, name="test-llm")
    store = await secret_store(bus)
    settings = fake_settings(fake)
    providers = dict(settings.providers)
    providers["google"] = llm.ProviderSettings(base_url=fake.base_url, key_name="llm.nobody")
    async with LLMClient(fake_settings(fake, providers=providers), bus, store) as client:
        with pytest.raises(ProviderRejected, match="no API key"):
            await client.complete(Request(provider="google", model="m", prompt="hi"))
    await bus.close()
    assert fake.echoed_keys == 0 and fake.hits() == []


def test_exported_names() -> None:
    assert sorted(llm.__all__) == [
        "ChatMessage", "DeadlineExceeded", "KeySource", "Keyring", "LLMClient", "LLMError",
        "LLMSettings", "ProviderFailed", "ProviderRejected", "ProviderSettings",
        "ProviderUnavailable", "Request", "Response", "Secret", "SecretError", "SecretStore",
        "Usage", "as_handler_control", "cache_key",
    ]
    assert API_KEY not in repr(llm.Secret(API_KEY))
