"""What a relayed stream is made of: a `Topic` (stream + filter subject + renderer) and the
SSE frames its messages become, rendered once per message and shared by every client.

Log lines are carried as `msgspec.Raw`: the relay re-frames chunks without parsing and
re-encoding every line (a capped run is ~10 MiB of lines, sent to every client).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from schemas.logs import LogChunk
from schemas.runs import RunStateChanged
from schemas.streams import EVT, LOGS

EMPTY_LINES = msgspec.Raw(b"[]")
KEEPALIVE = b": keepalive\n\n"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # one NATS subject token, nothing wild


def valid_id(value: str) -> bool:
    return bool(_TOKEN.match(value))


class StoredChunk(msgspec.Struct, kw_only=True):
    """A log chunk as the history API returns it and the archive keeps it;
    `id` is its ZLOTH_LOGS stream sequence (the SSE event id)."""

    id: int
    attempt: int = 0
    seq: int = 0
    lines: msgspec.Raw = EMPTY_LINES
    dropped: int = 0
    final: bool = False
    state: str | None = None


class _WireChunk(msgspec.Struct, kw_only=True):
    """The fields of schemas.logs.LogChunk the relay forwards, lines left undecoded."""

    run_id: str
    attempt: int = 0
    seq: int = 0
    lines: msgspec.Raw = EMPTY_LINES
    dropped: int = 0
    final: bool = False
    state: str | None = None


class _LogData(msgspec.Struct, kw_only=True):
    run_id: str
    attempt: int
    seq: int
    lines: msgspec.Raw
    dropped: int


class _EndData(msgspec.Struct, kw_only=True):
    run_id: str
    state: str | None


def decode_chunk(stream_seq: int, data: bytes) -> StoredChunk:
    """Raises msgspec.DecodeError / ValidationError on a malformed payload."""
    wire = msgspec.json.decode(data, type=_WireChunk)
    return StoredChunk(id=stream_seq, attempt=wire.attempt, seq=wire.seq,
                       lines=_one_line(wire.lines), dropped=wire.dropped, final=wire.final,
                       state=wire.state)


def _one_line(raw: msgspec.Raw) -> msgspec.Raw:
    # SSE data must fit on one line; only JSON whitespace can hold a raw newline.
    text = bytes(raw)
    if b"\n" in text or b"\r" in text:
        return msgspec.Raw(msgspec.json.encode(msgspec.json.decode(text)))
    return raw


@dataclass(frozen=True, slots=True)
class Frame:
    """One message's SSE bytes. `end` frames close the stream; a client that already
    saw this id on an earlier connection gets `end_only` (the end event alone)."""

    seq: int
    payload: bytes
    end: bool = False
    end_only: bytes = b""


def event(seq: int | None, name: str, data: bytes) -> bytes:
    head = b"" if seq is None else b"id: %d\n" % seq
    return head + b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def chunk_frame(run_id: str, chunk: StoredChunk) -> Frame:
    parts: list[bytes] = []
    if not chunk.final or chunk.dropped or chunk.lines != EMPTY_LINES:
        data = _LogData(run_id=run_id, attempt=chunk.attempt, seq=chunk.seq,
                        lines=chunk.lines, dropped=chunk.dropped)
        parts.append(event(chunk.id, "log", msgspec.json.encode(data)))
    if not chunk.final:
        return Frame(chunk.id, parts[0])
    end = event(chunk.id, "end", msgspec.json.encode(_EndData(run_id=run_id, state=chunk.state)))
    return Frame(chunk.id, b"".join([*parts, end]), end=True, end_only=end)


def run_event_frame(seq: int, data: bytes) -> Frame:
    # Decoded and re-encoded: validates the contract and guarantees a one-line payload.
    changed = msgspec.json.decode(data, type=RunStateChanged)
    return Frame(seq, event(seq, "run", msgspec.json.encode(changed)))


Renderer = Callable[[int, bytes], Frame]


@dataclass(frozen=True, slots=True)
class Topic:
    """A filtered view of one stream that the hub follows for its clients."""

    stream: str
    subject: str
    render: Renderer  # raises msgspec errors on a malformed message (the hub skips it)


def log_subject(run_id: str) -> str:
    return f"{LogChunk.subject_prefix}.{run_id}"


def run_logs(run_id: str) -> Topic:
    return Topic(LOGS.name, log_subject(run_id),
                 lambda seq, data: chunk_frame(run_id, decode_chunk(seq, data)))


def task_runs(task_id: str) -> Topic:
    return Topic(EVT.name, f"{RunStateChanged.subject_prefix}.*.{task_id}.*", run_event_frame)
