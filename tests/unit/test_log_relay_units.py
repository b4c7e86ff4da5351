"""log-relay pieces without a broker: SSE framing of chunks and run events, the bounded
mailbox, archive segments and truncation, the SSE parser used by the tests, the retention
and backlog settings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import pytest

from schemas.logs import LogChunk, LogLine
from schemas.runs import RunStateChanged
from services.core.config import load_settings
from services.core.errors import ConfigError
from services.log_relay import NAME
from services.log_relay.archive import _Packer
from services.log_relay.hub import HubStats, Mailbox, Session
from services.log_relay.retention import RetentionPolicy
from services.log_relay.service import retention_policy
from services.log_relay.settings import LogRelaySettings
from services.log_relay.store import decode_segment
from services.log_relay.topics import (
    Frame,
    chunk_frame,
    decode_chunk,
    run_event_frame,
    task_runs,
    valid_id,
)
from tests.support.sse import parse_block

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _wire(**fields: object) -> bytes:
    values: dict[str, object] = {"run_id": "run_1", "attempt": 2, "seq": 7}
    values.update(fields)
    return msgspec.json.encode(LogChunk(**values))  # type: ignore[arg-type]


def test_a_chunk_becomes_one_log_event_with_its_stream_seq_as_id() -> None:
    line = LogLine(ts=NOW, stream="stderr", text="boom\nagain")
    frame = chunk_frame("run_1", decode_chunk(41, _wire(lines=[line], dropped=3)))
    event = parse_block(frame.payload.rstrip(b"\n"))
    assert event is not None
    assert (event.id, event.event, frame.end) == ("41", "log", False)
    assert msgspec.json.decode(event.data) == {
        "run_id": "run_1", "attempt": 2, "seq": 7, "dropped": 3,
        "lines": [{"ts": "2026-01-02T03:04:05Z", "stream": "stderr", "text": "boom\nagain"}],
    }


def test_the_end_marker_is_an_end_event_and_a_log_event_only_if_it_says_something() -> None:
    bare = chunk_frame("run_1", decode_chunk(9, _wire(final=True, state="canceled")))
    assert bare.end
    assert bare.payload == bare.end_only == (
        b'id: 9\nevent: end\ndata: {"run_id":"run_1","state":"canceled"}\n\n')
    counted = chunk_frame("run_1", decode_chunk(9, _wire(final=True, state="failed", dropped=5)))
    assert counted.payload.startswith(b"id: 9\nevent: log\n")
    assert counted.payload.endswith(counted.end_only)


def test_pretty_printed_lines_are_folded_onto_one_data_line() -> None:
    raw = b'{"run_id": "run_1", "lines": [\n {"ts": "2026-01-02T03:04:05Z",\n'
    raw += b' "stream": "stdout", "text": "x"}\n]}'
    frame = chunk_frame("run_1", decode_chunk(1, raw))
    assert frame.payload.count(b"\n") == 4  # id, event, data, blank line


def test_run_events_are_validated_and_re_encoded() -> None:
    changed = RunStateChanged(run_id="run_1", task_id="task_1", executor="codex",
                              state="running", version=3, attempt=1, at=NOW)
    frame = run_event_frame(12, msgspec.json.encode(changed))
    event = parse_block(frame.payload)
    assert event is not None
    assert (event.id, event.event) == ("12", "run")
    assert msgspec.json.decode(event.data, type=RunStateChanged) == changed
    with pytest.raises(msgspec.ValidationError):
        run_event_frame(13, b'{"run_id": "run_1"}')
    assert task_runs("task_1").subject == "zloth.evt.run.*.task_1.*"


@pytest.mark.parametrize("value", ["", "a.b", "*", ">", "a b", "x" * 129, "é"])
def test_ids_that_would_change_the_subject_are_refused(value: str) -> None:
    assert not valid_id(value)


async def test_mailbox_skips_seen_ids_and_stops_a_client_past_its_bound() -> None:
    stats = HubStats(queue_bound=2)
    session = Session("test", stats)
    box = Mailbox(session, last=10, bound=2, stats=stats)
    assert box.offer(Frame(10, b"old"))
    assert box.offer(Frame(11, b"a"))
    assert box.offer(Frame(12, b"b"))
    assert not session.stopped.is_set()
    assert not box.offer(Frame(13, b"c"))
    assert session.stopped.is_set()
    assert session.reason == "slow"
    assert (stats.peak_queue, stats.dropped_total) == (2, 1)
    assert [await box.next(0.1), await box.next(0.1)] == [Frame(11, b"a"), Frame(12, b"b")]
    started = asyncio.get_running_loop().time()
    assert await box.next(0.05) is None  # idle: the caller sends a keepalive
    assert asyncio.get_running_loop().time() - started >= 0.05


async def test_packer_segments_round_trip_and_truncation_keeps_the_end() -> None:
    packer = _Packer(max_bytes=3000)
    line = LogLine(ts=NOW, stream="stdout", text="y" * 500)
    for seq in range(1, 11):
        await packer.add(decode_chunk(seq, _wire(seq=seq, lines=[line])))
    await packer.add(decode_chunk(11, _wire(final=True, state="succeeded")))
    await packer.flush()
    stored = [c for s in packer.segments for c in decode_segment(s.payload)]
    assert packer.truncated
    assert [c.id for c in stored][-1] == 11
    assert stored[-1].final
    assert packer.raw_bytes <= 3000 + len(msgspec.json.encode(stored[-1]))
    assert 1 < len(stored) < 11


def test_retention_and_backlog_settings_have_bounded_defaults() -> None:
    """Out of the box archives are kept 30 days within 2 GiB compressed, and a feed more
    than 1000 messages behind restarts; 0 turns each bound off."""
    settings = load_settings(LogRelaySettings, {}, service=NAME)
    assert retention_policy(settings) == RetentionPolicy(
        max_age_seconds=30 * 86_400.0, max_total_bytes=2 << 30,
        tombstone_seconds=365 * 86_400.0, batch=200)
    assert settings.feed_max_pending == 1000
    assert settings.archive_sweep_interval_seconds == 300.0
    tuned = load_settings(LogRelaySettings, {
        "ZLOTH_LOG_RELAY_ARCHIVE_RETENTION_DAYS": "0.5", "ZLOTH_ARCHIVE_RETENTION_DAYS": "9",
        "ZLOTH_ARCHIVE_MAX_TOTAL_BYTES": "0", "ZLOTH_LOG_RELAY_FEED_MAX_PENDING": "0",
    }, service=NAME)
    assert retention_policy(tuned).max_age_seconds == 43_200.0
    assert (tuned.archive_max_total_bytes, tuned.feed_max_pending) == (0, 0)


@pytest.mark.parametrize(("variable", "value"), [
    ("ZLOTH_LOG_RELAY_ARCHIVE_RETENTION_DAYS", "-1"),
    ("ZLOTH_ARCHIVE_MAX_TOTAL_BYTES", "-5"),
    ("ZLOTH_FEED_MAX_PENDING", "-1"),
    ("ZLOTH_ARCHIVE_SWEEP_INTERVAL_SECONDS", "0"),
    ("ZLOTH_ARCHIVE_SWEEP_BATCH", "0"),
])
def test_a_bad_retention_or_backlog_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(LogRelaySettings, {variable: value}, service=NAME)


def test_a_session_ended_for_its_feeds_lag_is_counted_apart_from_slow_clients() -> None:
    stats = HubStats()
    lagging, slow = Session("test", stats), Session("test", stats)
    lagging.stop("lagging")
    lagging.stop("slow")  # only the first reason counts
    slow.stop("slow")
    assert (lagging.reason, slow.reason) == ("lagging", "slow")
    assert (stats.lagged_total, stats.dropped_total) == (1, 1)
