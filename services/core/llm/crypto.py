"""Authenticated encryption of small secrets under a 256-bit master key.

`A256GCM`: AES-256-GCM from the `cryptography` package, used whenever it is installed.
`HS256-CTR-HMAC`: the stdlib fallback, a textbook generic composition and nothing new:
HKDF-SHA256 (RFC 5869) derives independent encryption and MAC keys; the message is XORed
with HMAC-SHA256(enc_key, nonce ‖ counter) blocks (CTR mode over a PRF, random 128-bit
nonce); then encrypt-then-MAC: HMAC-SHA256(mac_key, len(aad) ‖ aad ‖ nonce ‖ ciphertext),
checked in constant time before anything is decrypted. The algorithm is recorded with
each value, so values stay readable and `rotate()` moves them to AES-GCM once available.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import os
from typing import Any

from services.core.errors import ZlothError

A256GCM = "A256GCM"
HS256_CTR_HMAC = "HS256-CTR-HMAC"
KEY_BYTES = 32
_NONCE = {A256GCM: 12, HS256_CTR_HMAC: 16}
_TAG = 32
_SALT = b"zloth-secrets-v1"


class CryptoError(ZlothError):
    """A value that does not authenticate under the key (tampered, or another key)."""


def _aesgcm() -> Any:
    try:
        module = importlib.import_module("cryptography.hazmat.primitives.ciphers.aead")
    except ImportError:
        return None
    return module.AESGCM


def preferred_algorithm() -> str:
    return A256GCM if _aesgcm() is not None else HS256_CTR_HMAC


def seal(key: bytes, plaintext: bytes, aad: bytes, alg: str) -> tuple[bytes, bytes]:
    """Encrypt and authenticate; returns (nonce, ciphertext with its tag)."""
    _check_key(key)
    nonce = os.urandom(_NONCE[alg])
    if alg == A256GCM:
        return nonce, bytes(_require_aesgcm()(key).encrypt(nonce, plaintext, aad))
    enc_key, mac_key = _subkeys(key)
    body = _xor(plaintext, _keystream(enc_key, nonce, len(plaintext)))
    return nonce, body + _tag(mac_key, aad, nonce, body)


def unseal(key: bytes, nonce: bytes, sealed: bytes, aad: bytes, alg: str) -> bytes:
    _check_key(key)
    if alg == A256GCM:
        aesgcm = _require_aesgcm()
        invalid_tag = importlib.import_module("cryptography.exceptions").InvalidTag
        try:
            return bytes(aesgcm(key).decrypt(nonce, sealed, aad))
        except (invalid_tag, ValueError) as exc:
            raise CryptoError("secret does not authenticate") from exc
    if alg != HS256_CTR_HMAC or len(nonce) != _NONCE[alg] or len(sealed) < _TAG:
        raise CryptoError(f"unsupported or malformed value ({alg})")
    enc_key, mac_key = _subkeys(key)
    body, tag = sealed[:-_TAG], sealed[-_TAG:]
    if not hmac.compare_digest(tag, _tag(mac_key, aad, nonce, body)):
        raise CryptoError("secret does not authenticate")
    return _xor(body, _keystream(enc_key, nonce, len(body)))


def _check_key(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise CryptoError(f"a master key has {KEY_BYTES} bytes, not {len(key)}")


def _require_aesgcm() -> Any:
    found = _aesgcm()
    if found is None:
        raise CryptoError("A256GCM needs the `cryptography` package")
    return found


def _subkeys(key: bytes) -> tuple[bytes, bytes]:
    prk = hmac.new(_SALT, key, hashlib.sha256).digest()  # HKDF-Extract
    # HKDF-Expand of one block each, with distinct `info`: independent keys.
    enc = hmac.new(prk, b"enc\x01", hashlib.sha256).digest()
    mac = hmac.new(prk, b"mac\x01", hashlib.sha256).digest()
    return enc, mac


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = (length + 31) // 32
    return b"".join(
        hmac.new(key, nonce + i.to_bytes(8, "big"), hashlib.sha256).digest() for i in range(blocks)
    )[:length]


def _tag(mac_key: bytes, aad: bytes, nonce: bytes, body: bytes) -> bytes:
    framed = len(aad).to_bytes(8, "big") + aad + nonce + body
    return hmac.new(mac_key, framed, hashlib.sha256).digest()


def _xor(data: bytes, stream: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))
