"""The only module that imports nats: connect, provision, publish, and the job protocol.

One job attempt (DESIGN.md §3): fetch → claim the fencing token `(stream_seq,
num_delivered)` → run the handler while heartbeating `in_progress()` every ack_wait/4 →
ack, nak(delay), or dead-letter + term on the last delivery. A delivery that lost its
lease (a newer one claimed the message) never acks, naks or terms.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Generic, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg as NatsMsg
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from schemas.base import Message
from schemas.streams import BucketSpec, ConsumerSpec, StreamSpec
from services.core import metrics, tracing
from services.core.cancels import keep_cancellation
from services.core.errors import BackpressureError, BusError, Reject, Retry
from services.core.leases import Leases
from services.core.telemetry import get_logger

M = TypeVar("M", bound=Message)

CORRELATION_HEADER = "Correlation-Id"
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)


class Delivery(msgspec.Struct, kw_only=True):
    """What the handler knows about the delivery it is handling."""

    consumer: str
    subject: str
    stream_seq: int
    num_delivered: int
    max_deliver: int
    published_at: datetime
    headers: dict[str, str]
    leases: Leases | None = None

    @property
    def token(self) -> tuple[int, int]:
        return (self.stream_seq, self.num_delivered)

    @property
    def last(self) -> bool:
        return self.max_deliver > 0 and self.num_delivered >= self.max_deliver

    @property
    def correlation_id(self) -> str | None:
        return self.headers.get(CORRELATION_HEADER)

    async def still_owner(self) -> bool:
        if self.leases is None:
            return True
        return await self.leases.owns(self.consumer, self.stream_seq, self.num_delivered)


class KvEntry(msgspec.Struct, frozen=True):
    """A KV value with its revision, for compare-and-set updates."""

    value: bytes
    revision: int


Handler = Callable[[M, Delivery], Awaitable[None]]


class Consume(Generic[M]):
    """Registration of one handler on one durable consumer."""

    def __init__(
        self,
        spec: ConsumerSpec,
        kind: type[M],
        handler: Handler[M],
        *,
        concurrency: int | None = None,
        fenced: bool = True,
        heartbeat: bool = True,
    ) -> None:
        self.spec = spec
        self.kind = kind
        self.handler = handler
        self.concurrency = concurrency or min(spec.max_ack_pending, 64)
        self.fenced = fenced
        # Off only to demonstrate what heartbeats prevent (the bus tests' control case).
        self.heartbeat = heartbeat
        self.service = ""  # set by the runtime: the service this consumer belongs to

    @property
    def label(self) -> str:
        return self.spec.durable


class Bus:
    def __init__(self, nc: NatsClient, name: str) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=10)
        self.name = name
        self._log = get_logger(component="bus", service=name)
        self._closing: dict[str, bool] = {"now": False}
        # KV handles by bucket: `key_value()` costs a stream-info round trip per call.
        self._kv_handles: dict[str, KeyValue] = {}

    @classmethod
    async def connect(cls, url: str, name: str, *, connect_timeout: float = 5.0) -> Bus:
        log = get_logger(component="bus", service=name)
        closing = {"now": False}

        async def on_disconnect() -> None:
            if not closing["now"]:  # our own drain disconnects too: not worth a warning
                log.warning("nats_disconnected")

        async def on_reconnect() -> None:
            log.info("nats_reconnected")

        async def on_error(exc: Exception) -> None:
            log.warning("nats_error", error=str(exc))

        try:
            nc = await nats.connect(
                servers=[part.strip() for part in url.split(",") if part.strip()],
                name=name,
                connect_timeout=connect_timeout,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                error_cb=on_error,
            )
        except (OSError, nats.errors.Error) as exc:
            raise BusError(f"cannot connect to NATS at {url}: {exc}") from exc
        bus = cls(nc, name)
        bus._closing = closing
        return bus

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def close(self) -> None:
        self._closing["now"] = True
        if not self._nc.is_closed:
            try:
                await self._nc.drain()
            except (nats.errors.Error, TimeoutError, OSError):
                await self._nc.close()

    # -- provisioning -------------------------------------------------------------------

    async def ensure_stream(
        self, spec: StreamSpec, *, owner: bool = True, replicas: int = 1
    ) -> None:
        """Create the stream; update an existing one only from its owning service, so two
        versions during a rollout do not fight over its config."""
        config = api.StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            retention=api.RetentionPolicy(spec.retention),
            max_age=spec.max_age_seconds or None,
            max_msgs=spec.max_msgs,
            max_bytes=spec.max_bytes,
            max_msg_size=spec.max_msg_size,
            discard=api.DiscardPolicy.NEW if spec.discard_new else api.DiscardPolicy.OLD,
            duplicate_window=spec.duplicate_window_seconds,
            storage=api.StorageType.FILE,
            num_replicas=replicas,  # 3 on a NATS cluster (R3), 1 on a single server
            allow_msg_ttl=spec.allow_msg_ttl or None,
        )
        try:
            await self._js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # 10058: exists with another config
                raise BusError(f"cannot create stream {spec.name}: {exc}") from exc
            if owner:
                await self._js.update_stream(config)

    async def ensure_consumer(self, spec: ConsumerSpec) -> None:
        config = api.ConsumerConfig(
            durable_name=spec.durable,
            filter_subject=spec.filter_subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=spec.ack_wait_seconds,
            max_deliver=spec.max_deliver,
            max_ack_pending=spec.max_ack_pending,
        )
        try:
            await self._js.add_consumer(spec.stream, config)
        except nats.js.errors.BadRequestError as exc:
            # An existing consumer with another config (e.g. a changed concurrency):
            # the legacy create does not update, so say so instead of failing start-up.
            self._log.warning("consumer_config_differs", durable=spec.durable, error=str(exc))

    async def delete_consumer(self, stream: str, durable: str) -> bool:
        """Remove a durable consumer; False when there was none."""
        try:
            await self._js.delete_consumer(stream, durable)
        except nats.js.errors.NotFoundError:
            return False
        self._log.info("consumer_retired", stream=stream, durable=durable)
        return True

    async def ensure_bucket(self, spec: BucketSpec) -> None:
        try:
            await self._js.key_value(spec.name)
        except nats.js.errors.BucketNotFoundError:
            await self._js.create_key_value(
                bucket=spec.name, ttl=spec.ttl_seconds or None, history=spec.history
            )

    # -- publishing ---------------------------------------------------------------------

    async def publish(
        self,
        message: Message,
        *,
        correlation: str | None = None,
        headers: dict[str, str] | None = None,
        msg_id: str | None = None,
    ) -> int:
        """Publish with `Nats-Msg-Id` = the message's business key (or `msg_id`, for a
        deliberate re-publish past the dedup window); return the stream sequence."""
        return await self.publish_raw(
            message.subject(),
            msgspec.json.encode(message),
            msg_id=msg_id or message.msg_id(),
            correlation=correlation,
            headers=headers,
        )

    async def publish_raw(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str | None = None,
        correlation: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> int:
        hdrs = dict(headers or {})
        corr = correlation or correlation_id.get()
        if corr:
            hdrs[CORRELATION_HEADER] = corr
        if msg_id:
            hdrs["Nats-Msg-Id"] = msg_id
        tracing.inject(hdrs)
        try:
            ack = await keep_cancellation(
                self._js.publish(subject, data, headers=hdrs or None, timeout=10))
        except nats.js.errors.APIError as exc:
            if exc.err_code in (10077, 10047):  # maximum messages / bytes exceeded
                raise BackpressureError(f"{subject}: queue is full") from exc
            raise BusError(f"publish to {subject} failed: {exc}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"publish to {subject} failed: {exc}") from exc
        return int(ack.seq)

    async def broadcast(self, subject: str, data: bytes) -> None:
        """Core NATS publish (no persistence): reaches whoever listens right now."""
        await self._nc.publish(subject, data)

    async def listen(
        self, subject: str, callback: Callable[[bytes], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """Core NATS subscription; returns an unsubscribe coroutine function."""

        async def on_msg(msg: NatsMsg) -> None:
            await callback(msg.data)

        sub = await self._nc.subscribe(subject, cb=on_msg)
        return sub.unsubscribe

    # -- key/value ----------------------------------------------------------------------

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        """The value of `key`, or None when it is missing, deleted or expired."""
        kv = await self._kv(bucket)
        try:
            entry = await keep_cancellation(kv.get(key))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return entry.value

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        kv = await self._kv(bucket)
        return int(await keep_cancellation(kv.put(key, value)))

    async def kv_items(self, bucket: str) -> dict[str, bytes]:
        """Every live key of `bucket`. Keys come from the bucket stream's subject index
        (nats-py's `kv.keys()` can come back empty under load)."""
        prefix = f"$KV.{bucket}."
        info = await self._js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
        items: dict[str, bytes] = {}
        for subject in info.state.subjects or {}:
            key = subject[len(prefix):]
            value = await self.kv_get(bucket, key)
            if value is not None:
                items[key] = value
        return items

    # -- key/value: revisions, compare-and-set, per-key TTL (the LLM client's) -----------

    async def _kv(self, bucket: str) -> KeyValue:
        handle = self._kv_handles.get(bucket)
        if handle is None:
            try:
                handle = await self._js.key_value(bucket)
            except (nats.errors.Error, TimeoutError) as exc:
                raise BusError(f"KV bucket {bucket}: {exc}") from exc
            self._kv_handles[bucket] = handle
        return handle

    async def kv_get_entry(self, bucket: str, key: str) -> KvEntry | None:
        """The key's value and revision; None when it is absent, deleted or expired."""
        kv = await self._kv(bucket)
        try:
            entry = await keep_cancellation(kv.get(key))
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"KV get {bucket}/{key}: {exc}") from exc
        return KvEntry(value=entry.value or b"", revision=int(entry.revision or 0))

    async def kv_create(
        self, bucket: str, key: str, value: bytes, *, ttl: float | None = None
    ) -> int | None:
        """Write `key` only if it does not exist (or was deleted); its revision, or None
        when another writer got there first. `ttl` expires this one value (seconds, ≥ 1)."""
        kv = await self._kv(bucket)
        try:
            return int(await keep_cancellation(
                kv.create(key, value, msg_ttl=_ttl_seconds(ttl))))
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"KV create {bucket}/{key}: {exc}") from exc

    async def kv_update(self, bucket: str, key: str, value: bytes, revision: int) -> int | None:
        """Compare-and-set: write only if `key` is still at `revision`; the new revision,
        or None when another writer changed it in between (re-read and try again)."""
        kv = await self._kv(bucket)
        try:
            return int(await keep_cancellation(kv.update(key, value, last=revision)))
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"KV update {bucket}/{key}: {exc}") from exc

    async def kv_put_ttl(self, bucket: str, key: str, value: bytes, ttl: float | None) -> int:
        """Put that expires this one value after `ttl` seconds (rounded up to whole
        seconds, the server's unit); None or 0: keep it for the bucket's own max age."""
        kv = await self._kv(bucket)
        subject = f"$KV.{bucket}.{key}"  # nats-py's KV put has no TTL: publish as it would
        try:
            if not ttl:
                return int(await keep_cancellation(kv.put(key, value)))
            ack = await keep_cancellation(
                self._js.publish(subject, value, msg_ttl=_ttl_seconds(ttl)))
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"KV put {bucket}/{key}: {exc}") from exc
        return int(ack.seq)

    async def kv_delete(self, bucket: str, key: str) -> None:
        """Purge `key` and its history."""
        kv = await self._kv(bucket)
        try:
            await keep_cancellation(kv.purge(key))
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"KV purge {bucket}/{key}: {exc}") from exc

    # -- reading streams ----------------------------------------------------------------

    async def stream_last_seq(self, stream: str) -> int:
        info = await self._js.stream_info(stream)
        return int(info.state.last_seq)

    async def consumer_state(self, stream: str, durable: str) -> dict[str, int]:
        info = await self._js.consumer_info(stream, durable)
        return {
            "pending": int(info.num_pending or 0),
            "ack_pending": int(info.num_ack_pending or 0),
            "redelivered": int(info.num_redelivered or 0),
            "waiting": int(info.num_waiting or 0),
        }

    async def has_consumer(self, stream: str, durable: str) -> bool:
        try:
            await self._js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def consumers_state(self, stream: str) -> dict[str, dict[str, int]]:
        """Every consumer of `stream` with its pending, ack-pending and redelivered counts."""
        found: dict[str, dict[str, int]] = {}
        for info in await self._js.consumers_info(stream):
            found[str(info.name)] = {
                "pending": int(info.num_pending or 0),
                "ack_pending": int(info.num_ack_pending or 0),
                "redelivered": int(info.num_redelivered or 0),
                "waiting": int(info.num_waiting or 0),
            }
        return found

    async def stream_state(self, stream: str) -> dict[str, int]:
        info = await self._js.stream_info(stream)
        return {"messages": int(info.state.messages), "bytes": int(info.state.bytes)}

    async def replay(
        self, subject: str, start_seq: int = 1, *, idle_timeout: float | None = None
    ) -> AsyncGenerator[tuple[int, int, bytes], None]:
        """Yield `(stream_seq, num_pending, data)` of `subject` from `start_seq` on, live.

        An ordered, ephemeral consumer: no server state outlives the reader. Ends after
        `idle_timeout` seconds without a message when one is given.
        """
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start_seq),
        )
        sub = await self._js.subscribe(subject, ordered_consumer=True, config=config)
        try:
            while True:
                try:
                    msg = await keep_cancellation(sub.next_msg(timeout=idle_timeout or 3600.0))
                except nats.errors.TimeoutError:
                    if idle_timeout is not None:
                        return
                    continue
                meta = msg.metadata
                yield int(meta.sequence.stream), int(meta.num_pending), msg.data
        finally:
            await sub.unsubscribe()

    async def has_message(self, stream: str, subject: str) -> bool:
        """Whether `stream` still holds a message on `subject` (a queued or in-flight
        command of a work-queue stream; acked ones are gone)."""
        try:
            await self._js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def get_message(self, stream: str, seq: int) -> tuple[str, bytes] | None:
        try:
            raw = await self._js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            return None
        return raw.subject or "", raw.data or b""

    async def last_message(self, stream: str, subject: str) -> tuple[int, bytes] | None:
        """`(stream_seq, data)` of the newest message on `subject` (wildcards allowed),
        or None when the stream holds none."""
        try:
            raw = await self._js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"last message of {subject} in {stream}: {exc}") from exc
        return int(raw.seq or 0), raw.data or b""

    async def purge_subject(self, stream: str, subject: str) -> None:
        """Remove every message on `subject` (wildcards allowed) from `stream`."""
        try:
            await self._js.purge_stream(stream, subject=subject)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"purge {subject} from {stream}: {exc}") from exc

    # -- consuming ----------------------------------------------------------------------

    async def consume(
        self, registration: Consume[M], stopping: asyncio.Event, leases: Leases | None
    ) -> None:
        """Run the job protocol for one registration until `stopping` is set, then drain."""
        await ConsumerLoop(self, registration, leases).run(stopping)

    async def _pull(self, spec: ConsumerSpec) -> JetStreamContext.PullSubscription:
        return await self._js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)

    async def dead_letter(self, raw: NatsMsg, durable: str, reason: str) -> None:
        meta = raw.metadata
        headers = {
            "Zloth-Original-Subject": raw.subject,
            "Zloth-Stream-Seq": str(meta.sequence.stream),
            "Zloth-Deliveries": str(meta.num_delivered),
            "Zloth-Reason": reason[:500],
        }
        if raw.headers and CORRELATION_HEADER in raw.headers:
            headers[CORRELATION_HEADER] = raw.headers[CORRELATION_HEADER]
        await self.publish_raw(
            f"zloth.dlq.{durable}",
            raw.data,
            msg_id=f"dlq:{meta.stream}:{meta.sequence.stream}",
            headers=headers,
        )
        metrics.dead_letters_total.labels(durable).inc()


class _RunRef(msgspec.Struct):
    run_id: str | None = None


_run_ref_decoder = msgspec.json.Decoder(_RunRef)


def _run_id_of(data: bytes) -> str | None:
    """The run a message is about, for log context (most messages carry `run_id`)."""
    try:
        return _run_ref_decoder.decode(data).run_id
    except msgspec.DecodeError:
        return None


class ConsumerLoop(Generic[M]):
    """Fetch, dispatch with bounded local concurrency, drain on stop."""

    def __init__(self, bus: Bus, registration: Consume[M], leases: Leases | None) -> None:
        self._bus = bus
        self._reg = registration
        self._leases = leases if registration.fenced else None
        self._slots = asyncio.Semaphore(registration.concurrency)
        self._log = get_logger(consumer=registration.label)  # service: from the context

    async def run(self, stopping: asyncio.Event) -> None:
        sub = await self._bus._pull(self._reg.spec)
        try:
            async with asyncio.TaskGroup() as group:
                while not stopping.is_set():
                    await self._fetch_into(sub, group, stopping)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _fetch_into(
        self,
        sub: JetStreamContext.PullSubscription,
        group: asyncio.TaskGroup,
        stopping: asyncio.Event,
    ) -> None:
        await self._slots.acquire()
        if stopping.is_set():  # asked to stop while every slot was busy: take nothing more
            self._slots.release()
            return
        free = 1
        while free < self._reg.concurrency and not self._slots.locked():
            await self._slots.acquire()
            free += 1
        try:
            msgs = await keep_cancellation(sub.fetch(free, timeout=1.0))
        except (nats.errors.TimeoutError, TimeoutError):
            msgs = []
        except nats.errors.Error as exc:
            self._log.warning("fetch_failed", error=str(exc))
            msgs = []
            await asyncio.sleep(0.5)
        for _ in range(free - len(msgs)):
            self._slots.release()
        for raw in msgs:
            group.create_task(self._dispatch(raw))

    async def _dispatch(self, raw: NatsMsg) -> None:
        try:
            await self._attempt(raw)
        finally:
            self._slots.release()

    async def _attempt(self, raw: NatsMsg) -> None:
        spec = self._reg.spec
        meta = raw.metadata
        delivery = Delivery(
            consumer=spec.durable,
            subject=raw.subject,
            stream_seq=int(meta.sequence.stream),
            num_delivered=int(meta.num_delivered),
            max_deliver=spec.max_deliver,
            published_at=meta.timestamp,
            headers=dict(raw.headers or {}),
            leases=self._leases,
        )
        kind = spec.durable
        if delivery.num_delivered > 1:
            metrics.redeliveries_total.labels(kind).inc()
        else:
            metrics.queue_latency.labels(kind).observe(
                max(0.0, (datetime.now(UTC) - delivery.published_at).total_seconds())
            )
        if self._leases is not None and not await self._leases.claim(
            spec.durable, delivery.stream_seq, delivery.num_delivered
        ):
            metrics.stale_deliveries_total.labels(kind).inc()
            self._log.warning("stale_delivery_ignored", stream_seq=delivery.stream_seq)
            return
        corr = delivery.correlation_id or f"msg-{delivery.stream_seq}"
        token = correlation_id.set(corr)
        # Every log line written while handling carries where the message came from.
        with structlog.contextvars.bound_contextvars(
            service=self._reg.service or self._bus.name, subject=delivery.subject,
            stream_seq=delivery.stream_seq,
            delivery=delivery.num_delivered, correlation_id=corr,
            run_id=_run_id_of(raw.data),
        ):
            try:
                with tracing.span(f"handle {self._reg.label}", delivery.headers,
                                  {"zloth.service": self._reg.service,
                                   "messaging.destination": delivery.subject}):
                    await self._run_attempt(raw, delivery)
            finally:
                correlation_id.reset(token)

    async def _run_attempt(self, raw: NatsMsg, delivery: Delivery) -> None:
        try:
            message = msgspec.json.decode(raw.data, type=self._reg.kind)
        except msgspec.DecodeError as exc:  # poison: never becomes decodable
            await self._finish(raw, delivery, "rejected", dead=f"undecodable: {exc}")
            return
        started = time.monotonic()
        outcome: tuple[str, float | None, str | None] = ("ok", None, None)
        lost = asyncio.Event()

        async def guarded() -> None:
            nonlocal outcome
            try:
                await self._reg.handler(message, delivery)
            except Retry as exc:
                outcome = ("retry", exc.delay, exc.reason)
            except Reject as exc:
                outcome = ("rejected", None, exc.reason)
            except Exception as exc:  # noqa: BLE001  top of a unit of work: any failure naks
                self._log.exception("handler_failed", stream_seq=delivery.stream_seq)
                outcome = ("error", None, f"{type(exc).__name__}: {exc}")

        async with asyncio.TaskGroup() as group:
            work = group.create_task(guarded())
            if self._reg.heartbeat:
                beat = group.create_task(self._heartbeat(raw, delivery, work, lost))
                work.add_done_callback(lambda _: beat.cancel())
        status, delay, reason = outcome
        if lost.is_set() or work.cancelled():
            status = "lease_lost"
            self._log.warning("lease_lost", stream_seq=delivery.stream_seq)
        elapsed = time.monotonic() - started
        metrics.job_duration.labels(self._reg.label, status).observe(elapsed)
        metrics.jobs_total.labels(self._reg.label, status).inc()
        # The canonical line: one per handled message.
        self._log.info("message_handled", consumer=self._reg.label, status=status,
                       duration_ms=round(elapsed * 1000, 2), reason=reason)
        if status == "lease_lost":
            return
        await self._settle(raw, delivery, status, delay, reason)

    async def _settle(
        self, raw: NatsMsg, delivery: Delivery, status: str, delay: float | None, reason: str | None
    ) -> None:
        if not await delivery.still_owner():
            self._log.warning("stale_attempt_not_acked", stream_seq=delivery.stream_seq)
            return
        if status == "ok":
            await self._finish(raw, delivery, "ok")
        elif status == "rejected":
            await self._finish(raw, delivery, status, dead=reason or "rejected")
        elif delivery.last:
            await self._finish(raw, delivery, status, dead=f"last delivery failed: {reason}")
        else:
            backoff = self._reg.spec.backoff_seconds or (1.0,)
            step = min(delivery.num_delivered, len(backoff)) - 1
            wait = delay if delay is not None else backoff[step]
            await raw.nak(delay=wait)

    async def _finish(
        self, raw: NatsMsg, delivery: Delivery, status: str, dead: str | None = None
    ) -> None:
        if dead is not None:
            self._log.error("dead_lettered", stream_seq=delivery.stream_seq, reason=dead)
            await self._bus.dead_letter(raw, self._reg.spec.durable, dead)
            await raw.term()
        else:
            await raw.ack()
        if self._leases is not None:
            await self._leases.release(
                self._reg.spec.durable, delivery.stream_seq, delivery.num_delivered
            )

    async def _heartbeat(
        self, raw: NatsMsg, delivery: Delivery, work: asyncio.Task[None], lost: asyncio.Event
    ) -> None:
        ack_wait = self._reg.spec.ack_wait_seconds
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(ack_wait / 4)
            try:
                await raw.in_progress()
                renewed = True
                if self._leases is not None:
                    renewed = await self._leases.renew(
                        delivery.consumer, delivery.stream_seq, delivery.num_delivered
                    )
                if not renewed:  # a newer delivery owns the message: stop this attempt
                    lost.set()
                    work.cancel()
                    return
                last_ok = time.monotonic()
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                self._log.warning("heartbeat_failed", error=str(exc))
                if time.monotonic() - last_ok > ack_wait:
                    lost.set()
                    work.cancel()
                    return


def _ttl_seconds(ttl: float | None) -> float | None:
    # The Nats-TTL header takes whole seconds; never round a short TTL down to "forever".
    return None if not ttl else float(max(1, math.ceil(ttl)))
