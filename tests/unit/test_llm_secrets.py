"""Sealing secrets: round trips, tampering and swaps detected, key parsing, reprs."""

from __future__ import annotations

import base64
import importlib.util
import os

import pytest

from services.core.errors import ConfigError
from services.core.llm import crypto
from services.core.llm.secrets import Keyring, Secret

KEY = os.urandom(32)
ALGORITHMS = [crypto.HS256_CTR_HMAC, pytest.param(crypto.A256GCM, marks=pytest.mark.skipif(
    importlib.util.find_spec("cryptography") is None, reason="cryptography not installed"))]


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 1000])
def test_round_trip(alg: str, size: int) -> None:
    plain = os.urandom(size)
    nonce, sealed = crypto.seal(KEY, plain, b"name", alg)
    assert crypto.unseal(KEY, nonce, sealed, b"name", alg) == plain
    if size >= 8:
        assert plain not in sealed


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_change_is_detected(alg: str) -> None:
    """A flipped bit anywhere, another AAD (name), another key: nothing decrypts."""
    nonce, sealed = crypto.seal(KEY, b"sk-live-1234567890", b"llm.openai", alg)
    for i in range(len(sealed)):
        broken = bytearray(sealed)
        broken[i] ^= 0x01
        with pytest.raises(crypto.CryptoError):
            crypto.unseal(KEY, nonce, bytes(broken), b"llm.openai", alg)
    with pytest.raises(crypto.CryptoError):
        crypto.unseal(KEY, bytes([nonce[0] ^ 1]) + nonce[1:], sealed, b"llm.openai", alg)
    with pytest.raises(crypto.CryptoError):
        crypto.unseal(KEY, nonce, sealed, b"llm.google", alg)
    with pytest.raises(crypto.CryptoError):
        crypto.unseal(os.urandom(32), nonce, sealed, b"llm.openai", alg)


def test_nonces_never_repeat() -> None:
    nonces = {crypto.seal(KEY, b"same", b"", crypto.HS256_CTR_HMAC)[0] for _ in range(200)}
    assert len(nonces) == 200


def test_stored_values_stay_readable() -> None:
    """A known answer: values sealed by this version must open in every later one."""
    nonce = bytes.fromhex("bb7b4c933ecf0f694f80a936bcbe0f18")
    sealed = bytes.fromhex("f5a4a65f12027b83a4b7424eb190ae0a517168425205e250b16c740bdf1312cf"
                           "692f6819481888e7e4578d1943b1ed")
    plain = crypto.unseal(bytes(range(32)), nonce, sealed, b"llm.openai", crypto.HS256_CTR_HMAC)
    assert plain == b"sk-known-answer"


def test_keyring_parsing() -> None:
    key = base64.b64encode(bytes(32)).decode()
    urlsafe = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
    ring = Keyring.parse(f"k2:{urlsafe}, k1:{key}")
    assert ring.active == "k2" and ring.key("k1") == bytes(32)
    assert ring.key("k2") == bytes(range(32))
    for bad in ("", "nokey", "k1:" + base64.b64encode(bytes(16)).decode(), "k 1:" + key,
                "k1:!!!!"):
        with pytest.raises(ConfigError, match="ZLOTH_MASTER_KEY"):
            Keyring.parse(bad)
    with pytest.raises(ConfigError, match="ZLOTH_MASTER_KEY is not set"):
        Keyring.from_env({})


def test_a_secret_hides_in_reprs() -> None:
    secret = Secret("sk-live-abcdef")
    assert "sk-live" not in repr(secret) and "sk-live" not in f"{secret}"
    assert "sk-live" not in repr({"key": secret}) and secret.reveal() == "sk-live-abcdef"
