"""The encrypted secret store: API keys and other secrets sealed under a master key
(crypto.py) in a KV bucket; rotation re-encrypts every value under the active key id.

ZLOTH_MASTER_KEY = "<key id>:<32 bytes, base64>[,<older id>:<key>…]": the first key
encrypts, every listed key decrypts. To rotate: put a new key first, keep the old one
after it, run `rotate()`, then drop the old one. A value is bound to its name (AAD), so
a value copied under another name does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

import msgspec

from schemas.streams import SECRETS_BUCKET
from services.core.bus import Bus
from services.core.errors import ConfigError, ZlothError
from services.core.llm import crypto

ENV = "ZLOTH_MASTER_KEY"
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_NAME = re.compile(r"^[A-Za-z0-9_=-][A-Za-z0-9_=./-]*$")


class SecretError(ZlothError):
    pass


class Secret:
    """A secret value that does not show itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('[redacted]')"

    __str__ = __repr__


class Keyring:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ConfigError(f"{ENV}: no key given")
        self.active = keys[0][0]
        self._keys = dict(keys)

    @classmethod
    def parse(cls, text: str, variable: str = ENV) -> Keyring:
        keys: list[tuple[str, bytes]] = []
        for item in (part.strip() for part in text.split(",")):
            key_id, sep, encoded = item.partition(":")
            if not sep or not _KEY_ID.match(key_id):
                raise ConfigError(f"{variable}: expected '<key id>:<base64 key>', got {key_id!r}")
            try:
                key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_")
            except (binascii.Error, ValueError):
                raise ConfigError(f"{variable}: key {key_id!r} is not base64") from None
            if len(key) != crypto.KEY_BYTES:
                raise ConfigError(f"{variable}: key {key_id!r} must be {crypto.KEY_BYTES} bytes")
            keys.append((key_id, key))
        return cls(keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Keyring:
        text = environ.get(ENV, "")
        if not text:
            raise ConfigError(f"{ENV} is not set: it holds the key that encrypts secrets")
        return cls.parse(text)

    def key(self, key_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            raise SecretError(f"secret sealed under unknown key id {key_id!r}") from None


class _Sealed(msgspec.Struct, frozen=True, kw_only=True):
    v: int = 1
    alg: str
    kid: str
    nonce: str
    ct: str


class SecretStore:
    def __init__(self, bus: Bus, keyring: Keyring, bucket: str = SECRETS_BUCKET.name) -> None:
        self._bus = bus
        self._keyring = keyring
        self._bucket = bucket

    async def ensure(self) -> None:
        await self._bus.ensure_bucket(SECRETS_BUCKET)

    async def put(self, name: str, value: str) -> None:
        await self._bus.kv_put(self._bucket, _checked(name), self._seal(name, value))

    async def get(self, name: str) -> Secret | None:
        entry = await self._bus.kv_get_entry(self._bucket, _checked(name))
        return None if entry is None else Secret(self._open(name, entry.value))

    async def rotate(self) -> int:
        """Re-encrypt every value not sealed under the active key and algorithm; returns
        how many. A value changed meanwhile is left to its writer (compare-and-set)."""
        moved = 0
        for name in await self._bus.kv_items(self._bucket):
            entry = await self._bus.kv_get_entry(self._bucket, name)
            if entry is None:
                continue
            sealed = msgspec.json.decode(entry.value, type=_Sealed)
            if sealed.kid == self._keyring.active and sealed.alg == crypto.preferred_algorithm():
                continue
            data = self._seal(name, self._open(name, entry.value))
            if await self._bus.kv_update(self._bucket, name, data, entry.revision) is not None:
                moved += 1
        return moved

    def _seal(self, name: str, value: str) -> bytes:
        alg, kid = crypto.preferred_algorithm(), self._keyring.active
        nonce, ct = crypto.seal(self._keyring.key(kid), value.encode(), _aad(name, kid, alg), alg)
        sealed = _Sealed(alg=alg, kid=kid, nonce=_b64(nonce), ct=_b64(ct))
        return msgspec.json.encode(sealed)

    def _open(self, name: str, data: bytes) -> str:
        try:
            sealed = msgspec.json.decode(data, type=_Sealed)
            plain = crypto.unseal(self._keyring.key(sealed.kid), base64.b64decode(sealed.nonce),
                                  base64.b64decode(sealed.ct), _aad(name, sealed.kid, sealed.alg),
                                  sealed.alg)
        except (msgspec.DecodeError, binascii.Error, crypto.CryptoError) as exc:
            raise SecretError(f"secret {name!r} cannot be decrypted: {exc}") from None
        return plain.decode()


def _aad(name: str, kid: str, alg: str) -> bytes:
    # Binds the value to its name, key id and algorithm: none can be swapped unnoticed.
    return f"zloth-secret\x00{name}\x00{kid}\x00{alg}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _checked(name: str) -> str:
    if not _NAME.match(name) or name.endswith(".") or ".." in name:
        raise SecretError(f"invalid secret name {name!r} (letters, digits, - _ = . /)")
    return name
