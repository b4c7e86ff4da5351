"""`Idempotency-Key` on POSTs: the first request with a key claims it (a unique row), its 2xx
answer is stored in the same transaction as its effects, and a retry replays that answer.

A key reused with another method, path or body is a 409; a retry while the first request is
still running is a 409 with Retry-After. Non-2xx answers are not kept (nothing was written,
so the client may retry with the same key). A claim older than `STALE_AFTER_SECONDS` belongs
to a crashed request: its stored answer is replayed, or the key is taken over if it had none.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.core.http import HTTPError
from services.core.store import Queries, Store

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
STALE_AFTER_SECONDS = 60.0  # well above any request's lifetime (publishes are bounded)
MAX_KEY_LENGTH = 255

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Reply:
    """What a POST handler answers: the encoded JSON body and its status."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        return Response(
            self.body, status_code=self.status, media_type="application/json",
            headers=self.headers,
        )


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to store for a claimed key, written with the request's effects."""

    key: str
    owner: str
    status: int
    body: bytes


@dataclass(frozen=True)
class Claim:
    key: str
    owner: str

    def record(self, status: int, body: bytes) -> KeyRecord:
        return KeyRecord(key=self.key, owner=self.owner, status=status, body=body)


PostHandler = Callable[[Request, Claim | None], Awaitable[Reply]]
_Outcome = Literal["claimed", "replay", "mismatch", "busy"]


async def write_record(tx: Queries, record: KeyRecord) -> None:
    """Store the answer inside the caller's transaction; fails (rolling back the effects)
    if this request lost its claim to a takeover."""
    changed = await tx.execute(
        "UPDATE idempotency_keys SET status = ?, response = ? WHERE key = ? AND owner = ?",
        (record.status, record.body, record.key, record.owner),
    )
    if changed != 1:
        raise HTTPError(
            409, "idempotency_key_in_progress",
            "another request took over this Idempotency-Key; retry to see its answer",
            field=IDEMPOTENCY_HEADER, headers={"Retry-After": "1"},
        )


def fingerprint(method: str, path: str, body: bytes) -> str:
    """Method, path and body; a JSON body is canonicalised so key order does not matter."""
    try:
        canonical = msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    except msgspec.DecodeError:
        canonical = body
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


class Idempotency:
    def __init__(self, db: Store, clock: Clock, ttl_seconds: float) -> None:
        self._db = db
        self._clock = clock
        self._ttl = ttl_seconds

    async def handle(self, request: Request, handler: PostHandler) -> Response:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            return (await handler(request, None)).response()
        _check_key(key)
        body = await request.body()
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        claim = Claim(key=key, owner=uuid.uuid4().hex)
        outcome, stored = await self._claim(claim, fingerprint(request.method, path, body))
        if outcome == "mismatch":
            raise HTTPError(
                409, "idempotency_key_reused",
                "this Idempotency-Key was used for a different request", field=IDEMPOTENCY_HEADER,
            )
        if outcome == "busy":
            raise HTTPError(
                409, "idempotency_key_in_progress",
                "a request with this Idempotency-Key is still being processed",
                field=IDEMPOTENCY_HEADER, headers={"Retry-After": "1"},
            )
        if stored is not None:
            return Reply(stored[0], stored[1], {REPLAYED_HEADER: "true"}).response()
        try:
            reply = await handler(request, claim)
        except Exception:  # any failure: settle the claim, then let the error answer
            await self._settle(claim, None)
            raise
        await self._settle(claim, reply)
        return reply.response()

    async def _claim(self, claim: Claim, print_: str) -> tuple[_Outcome, tuple[int, bytes] | None]:
        now = self._clock().timestamp()
        async with self._db.transaction() as tx:
            added = await tx.execute(
                "INSERT INTO idempotency_keys (key, fingerprint, owner, claimed_at, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                (claim.key, print_, claim.owner, now, now),
            )
            if added:
                return "claimed", None
            row = await tx.fetchone(
                "SELECT fingerprint, owner, claimed_at, status, response FROM idempotency_keys"
                " WHERE key = ?", (claim.key,),
            )
            if row is None or row["fingerprint"] != print_:
                return "mismatch", None
            answer = (int(row["status"]), bytes(row["response"])) if row["status"] else None
            if row["owner"] is None and answer is not None:
                return "replay", answer
            if float(row["claimed_at"]) > now - STALE_AFTER_SECONDS:
                return "busy", None
            # The claiming request died: its answer (if it got that far) stands; else retry.
            owner = None if answer is not None else claim.owner
            await tx.execute(
                "UPDATE idempotency_keys SET owner = ?, claimed_at = ? WHERE key = ?",
                (owner, now, claim.key),
            )
            return ("replay", answer) if answer is not None else ("claimed", None)

    async def _settle(self, claim: Claim, reply: Reply | None) -> None:
        """Keep a 2xx answer (if the handler did not store it with its effects), forget
        the key otherwise, unless an answer was already stored (its effects exist)."""
        if reply is not None and 200 <= reply.status < 300:
            await self._db.execute(
                "UPDATE idempotency_keys SET status = COALESCE(status, ?),"
                " response = COALESCE(response, ?), owner = NULL WHERE key = ? AND owner = ?",
                (reply.status, reply.body, claim.key, claim.owner),
            )
            return
        async with self._db.transaction() as tx:
            await tx.execute(
                "DELETE FROM idempotency_keys WHERE key = ? AND owner = ? AND status IS NULL",
                (claim.key, claim.owner),
            )
            await tx.execute(
                "UPDATE idempotency_keys SET owner = NULL WHERE key = ? AND owner = ?",
                (claim.key, claim.owner),
            )

    async def expire(self) -> int:
        """Forget keys older than the TTL (a claim still running is left alone)."""
        now = self._clock().timestamp()
        return await self._db.execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?"
            " AND (owner IS NULL OR claimed_at < ?)",
            (now - self._ttl, now - STALE_AFTER_SECONDS),
        )


def _check_key(key: str) -> None:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise HTTPError(
            422, "invalid_header",
            f"{IDEMPOTENCY_HEADER} must be 1-{MAX_KEY_LENGTH} printable ASCII characters",
            field=IDEMPOTENCY_HEADER,
        )
