"""Authenticated encryption of small secrets: AES-256-GCM (the `cryptography` package)
under a 256-bit master key, a random 96-bit nonce per value, and associated data that
binds each value to where it is stored. The algorithm is recorded with every value, so a
later one can be added and `rotate()` can move values to it."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.core.errors import ZlothError

A256GCM = "A256GCM"
KEY_BYTES = 32
_NONCE_BYTES = 12


class CryptoError(ZlothError):
    """A value that does not authenticate under the key (tampered, or another key)."""


def preferred_algorithm() -> str:
    return A256GCM


def seal(key: bytes, plaintext: bytes, aad: bytes, alg: str = A256GCM) -> tuple[bytes, bytes]:
    """Encrypt and authenticate; returns (nonce, ciphertext with its tag)."""
    _check(key, alg)
    # Random 96-bit nonces: NIST SP 800-38D allows 2^32 of them per key; a secret store
    # seals a handful of values per put and rotation, far below that.
    nonce = os.urandom(_NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, nonce: bytes, sealed: bytes, aad: bytes, alg: str = A256GCM) -> bytes:
    _check(key, alg)
    if len(nonce) != _NONCE_BYTES:
        raise CryptoError("malformed value (nonce)")
    try:
        return AESGCM(key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise CryptoError("secret does not authenticate") from None


def _check(key: bytes, alg: str) -> None:
    if alg != A256GCM:
        raise CryptoError(f"unsupported algorithm {alg!r}")
    if len(key) != KEY_BYTES:
        raise CryptoError(f"a master key has {KEY_BYTES} bytes, not {len(key)}")
