"""The encrypted secret store in KV: values at rest are ciphertext bound to their name,
rotation re-encrypts under the new key, and API keys never reach the logs."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator

import msgspec
import pytest
import structlog

from schemas.streams import SECRETS_BUCKET
from services.core.bus import Bus
from services.core.llm import (
    Keyring,
    LLMClient,
    LLMError,
    Request,
    SecretError,
    SecretStore,
)
from services.core.telemetry import configure_logging
from tests.support.fake_llm import API_KEY, FakeLLM, Fault, fake_settings, secret_store


def new_key(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"



async def raw(bus: Bus, name: str) -> dict[str, str]:
    entry = await bus.kv_get_entry(SECRETS_BUCKET.name, name)
    assert entry is not None
    found: dict[str, str] = json.loads(entry.value)
    return found


async def test_values_at_rest_are_sealed_and_bound_to_their_name(bus: Bus) -> None:
    store = SecretStore(bus, Keyring.parse(new_key("k1")))
    await store.ensure()
    await store.put("llm.openai", "sk-live-plaintext-value")
    secret = await store.get("llm.openai")
    assert secret is not None and secret.reveal() == "sk-live-plaintext-value"
    stored = await raw(bus, "llm.openai")
    assert stored["kid"] == "k1" and "plaintext" not in json.dumps(stored)
    assert await store.get("llm.google") is None
    # The same ciphertext under another name does not decrypt.
    await bus.kv_put(SECRETS_BUCKET.name, "llm.google", msgspec.json.encode(stored))
    with pytest.raises(SecretError):
        await store.get("llm.google")


async def test_rotation_moves_every_value_to_the_new_key(bus: Bus) -> None:
    old, new = new_key("k1"), new_key("k2")
    store = SecretStore(bus, Keyring.parse(old))
    await store.ensure()
    for name in ("llm.openai", "llm.anthropic", "github/token"):
        await store.put(name, f"value of {name}")
    with pytest.raises(SecretError, match="unknown key id"):
        await SecretStore(bus, Keyring.parse(new)).get("llm.openai")

    rotating = SecretStore(bus, Keyring.parse(f"{new},{old}"))
    assert await rotating.rotate() == 3
    assert await rotating.rotate() == 0
    assert {(await raw(bus, n))["kid"] for n in ("llm.openai", "github/token")} == {"k2"}
    after = SecretStore(bus, Keyring.parse(new))  # the old key is gone now
    secret = await after.get("github/token")
    assert secret is not None and secret.reveal() == "value of github/token"


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    try:
        yield server
    finally:
        server.stop()


async def test_api_keys_never_reach_the_logs(
    bus: Bus, fake: FakeLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON logs at debug level through a success, retries, and a 401 whose body repeats
    the (wrong) key presented: neither key appears in any log line or error. The wrong
    key has Google's shape, which the generic log scrubber does not recognise."""
    configure_logging("debug", "json")
    wrong = "AIzaSyWrongButSecret0123456789"
    try:
        fake.plan = lambda attempt, prompt: Fault("5xx") if attempt == 1 else Fault()
        async with LLMClient(fake_settings(fake), bus, await secret_store(bus)) as client:
            await client.complete(Request(provider="openai", model="m", prompt="retry me"))
        async with LLMClient(fake_settings(fake), bus,
                             await secret_store(bus, api_key=wrong)) as client:
            with pytest.raises(LLMError) as caught:
                await client.complete(Request(provider="google", model="m", prompt="401"))
    finally:
        structlog.reset_defaults()
    logged = capsys.readouterr().err
    assert fake.echoed_keys == 1  # the provider did send the key back
    assert "llm_retry_scheduled" in logged and "Incorrect API key" in logged
    assert API_KEY not in logged
    assert wrong not in logged
    assert wrong not in str(caught.value)
