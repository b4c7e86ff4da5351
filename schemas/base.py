"""Message bases and shared types of the wire contract.

Wire types never forbid unknown fields (old consumers must skip new ones); every
datetime is timezone-aware UTC.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import ClassVar, TypeVar

import msgspec


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A sortable-enough unique id with a readable prefix (`run_…`, `task_…`)."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every message; `subject()` and `msg_id()` say where and under which
    deterministic `Nats-Msg-Id` it is published. Commands carry the run id as the last
    subject token, so "is this run's command still queued?" is one stream lookup."""

    subject_prefix: ClassVar[str] = ""

    def subject(self) -> str:
        return self.subject_prefix

    def msg_id(self) -> str:
        raise NotImplementedError


class Command(Message, frozen=True, kw_only=True):
    """An imperative, consumed by exactly one service from the work-queue stream."""


class Event(Message, frozen=True, kw_only=True):
    """Something that happened, fanned out from the events stream."""


def encode(message: Message) -> bytes:
    return msgspec.json.encode(message)


M = TypeVar("M", bound=Message)


def decode(data: bytes, kind: type[M]) -> M:
    return msgspec.json.decode(data, type=kind)
