"""Streams, consumers and KV buckets as plain data; services/core/bus.py provisions them.

Execution commands get one durable consumer per executor kind whose `max_ack_pending`
is that executor's global concurrency limit, enforced by the broker across replicas.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Retention = Literal["limits", "workqueue", "interest"]

DAY = 86_400.0


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subjects: list[str]
    retention: Retention = "limits"
    max_age_seconds: float = 0.0  # 0: unlimited
    max_msgs: int = -1
    max_bytes: int = -1
    max_msg_size: int = -1
    discard_new: bool = False
    duplicate_window_seconds: float = 120.0
    allow_msg_ttl: bool = False


class ConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    durable: str
    filter_subject: str
    ack_wait_seconds: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 1000
    # Delays (seconds) the bus naks with after the n-th failed delivery; the last repeats.
    backoff_seconds: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0)


class BucketSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    ttl_seconds: float = 0.0
    history: int = 1


CMD = StreamSpec(
    name="ZLOTH_CMD",
    subjects=["zloth.cmd.>"],
    retention="workqueue",
    max_msgs=100_000,
    max_bytes=1 << 30,
    discard_new=True,  # backpressure: a full queue refuses new work instead of losing old
    duplicate_window_seconds=600.0,
)
EVT = StreamSpec(
    name="ZLOTH_EVT",
    subjects=["zloth.evt.>"],
    max_age_seconds=7 * DAY,
    duplicate_window_seconds=600.0,
)
LOGS = StreamSpec(
    name="ZLOTH_LOGS",
    subjects=["zloth.logs.>"],
    max_age_seconds=3 * DAY,
    max_bytes=4 << 30,
    duplicate_window_seconds=120.0,
)
DLQ = StreamSpec(
    name="ZLOTH_DLQ",
    subjects=["zloth.dlq.>"],
    max_age_seconds=30 * DAY,
)
# Max-deliveries / terminated advisories are only sent when someone listens: keep them.
ADVISORIES = StreamSpec(
    name="ZLOTH_ADVISORIES",
    subjects=[
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ZLOTH_CMD.>",
        "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.ZLOTH_CMD.>",
    ],
    max_age_seconds=30 * DAY,
)
HOOKS = StreamSpec(
    name="ZLOTH_HOOKS",
    subjects=["zloth.hooks.github.>"],
    max_age_seconds=3 * DAY,
    duplicate_window_seconds=DAY,
)

ALL_STREAMS: tuple[StreamSpec, ...] = (CMD, EVT, LOGS, DLQ, ADVISORIES)

CANCEL_BUCKET = BucketSpec(name="zloth_cancel", ttl_seconds=DAY)
# Each service instance reports its own health/status here; `GET /v1/status` reads it.
STATUS_BUCKET = BucketSpec(name="zloth_status", ttl_seconds=60.0)
# Each runner re-announces its executors every few seconds; a key outlives it by the TTL.
EXECUTORS_BUCKET = BucketSpec(name="zloth_executors", ttl_seconds=45.0)


def exec_durable(executor: str, host: str) -> str:
    """The name of `executor`'s consumer on `host` (whether one exists says whether any
    runner there serves it)."""
    return f"exec-{executor}-{host}"


def exec_consumer(executor: str, host: str, concurrency: int,
                  ack_wait_seconds: float = 30.0) -> ConsumerSpec:
    """The durable consumer of one executor kind on one host, shared by the runners there:
    its `max_ack_pending` caps that executor's agents on the host (across all hosts the
    cap adds up; see schemas/hosts.py for why commands are per host)."""
    return ConsumerSpec(
        stream=CMD.name,
        durable=exec_durable(executor, host),
        filter_subject=f"zloth.cmd.exec.{executor}.{host}.*",
        ack_wait_seconds=ack_wait_seconds,
        max_deliver=4,
        max_ack_pending=concurrency,
    )

# LLM client (services/core/llm): outputs keyed by prompt hash, each value carries its own
# TTL (per-key `Nats-TTL`); the bucket's max age only caps a TTL configured longer.
LLM_CACHE_BUCKET = BucketSpec(name="zloth_llm_cache", ttl_seconds=7 * DAY)
# One key per provider; shared by every replica, updated by compare-and-set.
LLM_BREAKER_BUCKET = BucketSpec(name="zloth_llm_breaker", ttl_seconds=DAY)
# Encrypted secrets (API keys); no TTL, history 1 (rotation rewrites every value).
SECRETS_BUCKET = BucketSpec(name="zloth_secrets")
