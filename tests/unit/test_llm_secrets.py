"""Sealing secrets: round trips, tampering and swaps detected, key parsing, reprs."""

from __future__ import annotations

import base64
import os

import pytest

from services.core.errors import ConfigError
from services.core.llm import crypto
from services.core.llm.secrets import Keyring, Secret

KEY = os.urandom(32)
NONCE_HEX = "249782cdc1b8f25ee93ded23"
SEALED_HEX = "faa77d16e1bbbffc238ccf59b2c667096f59f3c61ae2b8eefdd385451b40cc"
@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 1000])
def test_round_trip(size: int) -> None:
    plain = os.urandom(size)
    nonce, sealed = crypto.seal(KEY, plain, b"name")
    assert crypto.unseal(KEY, nonce, sealed, b"name") == plain
    if size >= 8:
        assert plain not in sealed


def test_every_change_is_detected() -> None:
    """A flipped bit anywhere, another AAD (name), another key: nothing decrypts."""
    nonce, sealed = crypto.seal(KEY, b"sk-live-1234567890", b"llm.openai")
    for i in range(len(sealed)):
        broken = bytearray(sealed)
        broken[i] ^= 0x01
        with pytest.raises(crypto.CryptoError):
            crypto.unseal(KEY, nonce, bytes(broken), b"llm.openai")
    for nonce_, aad, key in ((bytes([nonce[0] ^ 1]) + nonce[1:], b"llm.openai", KEY),
                             (nonce, b"llm.google", KEY), (nonce, b"llm.openai", os.urandom(32)),
                             (nonce[:8], b"llm.openai", KEY)):
        with pytest.raises(crypto.CryptoError):
            crypto.unseal(key, nonce_, sealed, aad)
    with pytest.raises(crypto.CryptoError, match="unsupported"):
        crypto.unseal(KEY, nonce, sealed, b"llm.openai", "HS256-CTR-HMAC")


def test_nonces_never_repeat() -> None:
    nonces = {crypto.seal(KEY, b"same", b"")[0] for _ in range(200)}
    assert len(nonces) == 200


def test_stored_values_stay_readable() -> None:
    """A known answer (AES-256-GCM, key 00..1f): values sealed by this version must open
    in every later one."""
    nonce = bytes.fromhex(NONCE_HEX)
    plain = crypto.unseal(bytes(range(32)), nonce, bytes.fromhex(SEALED_HEX), b"llm.openai")
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
