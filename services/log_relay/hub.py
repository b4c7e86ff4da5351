"""Per-replica fan-out: one JetStream reader (`Feed`) per followed topic, shared by all of
this replica's clients of that topic, each client behind a bounded `Mailbox`.

The feed never waits for a client: a frame that does not fit in a client's mailbox stops
that client's session (its response ends; it resumes with Last-Event-ID), so memory is
bounded by clients × `client_queue_chunks` references to frames rendered once per message.
A feed lives while it has clients and ends with its topic (a run's final chunk).

A client still catching up reads through its own ephemeral reader instead (see follow.py),
whose buffer JetStream flow control bounds (~2 MB); one that stops reading then is dropped
by the response's write timeout.

A feed can fall behind too (a CPU-starved replica): its reader's buffer is bounded by the
same flow control, and the rest of the backlog waits in the stream, where each message's
`num_pending` counts it. The sum over feeds is the `zloth_log_feed_pending_messages`
gauge. A feed more than `max_pending` messages behind while sessions are attached ends
those sessions (reason "lagging"; they resume with Last-Event-ID, nothing is lost) and
restarts its reader after the last message it dispatched. A feed nobody is attached to
is left to catch up: it serves no stale frames, and a new reader would face the same
backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import msgspec

from services.core import metrics
from services.core.bus import Bus
from services.core.telemetry import get_logger
from services.log_relay import metrics as relay_metrics
from services.log_relay.topics import Frame, Topic

_RESTART_DELAY_SECONDS = 1.0


class HubClosed(Exception):
    """The relay is shutting down: no new feeds."""


class HubStats(msgspec.Struct, kw_only=True):
    feeds: int = 0
    sessions: int = 0
    attached: int = 0  # sessions reading live frames from a feed's mailbox
    queue_bound: int = 0
    peak_queue: int = 0  # the deepest any mailbox has ever been
    dropped_total: int = 0  # sessions stopped as too slow (mailbox full, or a write stuck)
    max_pending: int = 0  # a feed further behind than this restarts (0: no bound)
    pending: int = 0  # messages the feeds have not read yet (sum over feeds)
    peak_pending: int = 0  # the furthest behind any feed has been
    feed_restarts: int = 0  # feeds restarted for being more than max_pending behind
    lagged_total: int = 0  # sessions stopped because their feed fell that far behind


class Session:
    """One SSE connection; `stop()` ends its response, whatever it is waiting on."""

    def __init__(self, route: str, stats: HubStats | None = None) -> None:
        self.route = route
        self.stopped = asyncio.Event()
        self.reason = ""
        self._stats = stats

    def stop(self, reason: str) -> None:
        """`reason` "slow" or "lagging" (dropped: it may resume), "shutdown",
        "disconnected", "error"."""
        if not self.stopped.is_set():
            self.reason = reason
            self.stopped.set()
            if self._stats is not None:
                if reason == "slow":
                    self._stats.dropped_total += 1
                elif reason == "lagging":
                    self._stats.lagged_total += 1


class Mailbox:
    """A client's queue of live frames; frames at or below `last` are never queued."""

    def __init__(self, session: Session, last: int, bound: int, stats: HubStats) -> None:
        self.session = session
        self.last = last
        self._bound = bound
        self._stats = stats
        self._frames: deque[Frame] = deque()
        self._ready = asyncio.Event()

    def offer(self, frame: Frame) -> bool:
        """Queue `frame`; False when the client is too far behind (it is stopped)."""
        if frame.seq <= self.last:
            return True
        if len(self._frames) >= self._bound:
            self.session.stop("slow")
            return False
        self.put(frame)
        self.last = frame.seq
        return True

    def put(self, frame: Frame) -> None:
        self._frames.append(frame)
        self._stats.peak_queue = max(self._stats.peak_queue, len(self._frames))
        self._ready.set()

    async def next(self, idle_seconds: float) -> Frame | None:
        """The next frame, or None after `idle_seconds` without one."""
        if not self._frames:
            self._ready.clear()
            try:
                async with asyncio.timeout(idle_seconds):
                    await self._ready.wait()
            except TimeoutError:
                return None
        return self._frames.popleft()


class Feed:
    """Follows one topic from the newest message at its start; `pos` is the stream
    sequence of the last message dispatched, so a client whose last id is ≥ `pos` can
    attach without a gap, and one below it catches up from the stream first."""

    def __init__(self, bus: Bus, topic: Topic, bound: int, stats: HubStats) -> None:
        self.topic = topic
        self.pos = 0
        self.pending = 0  # the stream's messages on the topic after `pos`, as last seen
        self.end: Frame | None = None
        self.ready = asyncio.Event()
        self.refs = 0
        self.task: asyncio.Task[None] | None = None
        self._bus = bus
        self._bound = bound
        self._stats = stats
        self._boxes: set[Mailbox] = set()
        self._log = get_logger(service="log-relay", subject=topic.subject)

    def attach(self, session: Session, last: int) -> Mailbox:
        """Must be called with `last >= pos`, in the same event-loop step as that check."""
        box = Mailbox(session, last, self._bound, self._stats)
        if self.end is not None:
            box.put(Frame(self.end.seq, self.end.end_only, end=True))
        else:
            self._boxes.add(box)
        return box

    def detach(self, box: Mailbox) -> None:
        self._boxes.discard(box)

    @property
    def attached(self) -> int:
        return len(self._boxes)

    async def run(self) -> None:
        while True:
            try:
                await self._follow()
                return
            except Exception:  # noqa: BLE001  top of a unit of work: a feed restarts
                self._log.exception("feed_failed", pos=self.pos)
                await asyncio.sleep(_RESTART_DELAY_SECONDS)

    async def _follow(self) -> None:
        if not self.ready.is_set():
            newest = await self._bus.last_message(self.topic.stream, self.topic.subject)
            if newest is not None:
                self.pos = newest[0]
                frame = self.render(*newest)
                if frame is not None and frame.end:
                    self.end = frame
            self.ready.set()
        while self.end is None:
            await self._read()

    async def _read(self) -> None:
        """Dispatch from the stream after `pos` until the topic ends, or until the feed
        is too far behind: then its sessions end and the caller reads again from `pos`
        (closing the reader drops what it had buffered)."""
        async with aclosing(self._bus.replay(self.topic.subject, self.pos + 1)) as messages:
            async for seq, pending, data in messages:
                self.pending = pending
                self._stats.peak_pending = max(self._stats.peak_pending, pending)
                frame = self.render(seq, data)
                self.pos = seq
                if frame is not None:
                    self._dispatch(frame)
                    if frame.end:
                        self.end = frame
                        self.pending = 0
                        return
                if 0 < self._stats.max_pending < pending and self._boxes:
                    self._shed(pending)
                    return

    def _shed(self, pending: int) -> None:
        boxes, self._boxes = self._boxes, set()
        for box in boxes:
            box.session.stop("lagging")
        self._stats.feed_restarts += 1
        relay_metrics.feed_restarts_total.inc()
        self._log.warning("feed_restarted", reason="lagging", pos=self.pos, pending=pending,
                          max_pending=self._stats.max_pending, sessions_ended=len(boxes))

    def _dispatch(self, frame: Frame) -> None:
        for box in list(self._boxes):
            if not box.offer(frame):
                self._boxes.discard(box)

    def render(self, seq: int, data: bytes) -> Frame | None:
        try:
            return self.topic.render(seq, data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._log.warning("message_skipped", stream_seq=seq, error=str(exc))
            return None


class Hub:
    def __init__(self, bus: Bus, queue_bound: int, max_pending: int = 0) -> None:
        self.bus = bus
        self._bound = queue_bound
        self._stats = HubStats(queue_bound=queue_bound, max_pending=max_pending)
        self._feeds: dict[str, Feed] = {}
        self._sessions: set[Session] = set()
        self._group: asyncio.TaskGroup | None = None
        self._running = asyncio.Event()
        self.closing = False
        relay_metrics.track(self)

    def pending(self) -> int:
        """Messages the feeds have not read yet (each as of the last message it read)."""
        return sum(feed.pending for feed in list(self._feeds.values()))

    def stats(self) -> HubStats:
        self._stats.feeds = len(self._feeds)
        self._stats.sessions = len(self._sessions)
        self._stats.attached = sum(feed.attached for feed in self._feeds.values())
        self._stats.pending = self.pending()
        return msgspec.structs.replace(self._stats)

    async def run(self, stopping: asyncio.Event) -> None:
        """Own the feeds' tasks; on stop, end every session so HTTP can drain."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            self._running.set()
            await stopping.wait()
            self.closing = True
            for session in list(self._sessions):
                session.stop("shutdown")
            for feed in self._feeds.values():
                if feed.task is not None:
                    feed.task.cancel()
            self._feeds.clear()

    @contextlib.contextmanager
    def session(self, route: str) -> Iterator[Session]:
        session = Session(route, self._stats)
        if self.closing:
            session.stop("shutdown")
        self._sessions.add(session)
        metrics.sse_clients.labels(route).inc()
        try:
            yield session
        finally:
            self._sessions.discard(session)
            metrics.sse_clients.labels(route).dec()

    @contextlib.asynccontextmanager
    async def feed(self, topic: Topic) -> AsyncIterator[Feed]:
        """The shared, started feed of `topic`, kept alive while the caller holds it."""
        await self._running.wait()
        if self.closing or self._group is None:
            raise HubClosed
        feed = self._feeds.get(topic.subject)
        if feed is None:
            feed = Feed(self.bus, topic, self._bound, self._stats)
            # A fresh context: the feed outlives the request that started it, and its log
            # lines must not carry that request's correlation id.
            feed.task = self._group.create_task(feed.run(), context=contextvars.Context())
            self._feeds[topic.subject] = feed
        feed.refs += 1
        try:
            await feed.ready.wait()
            yield feed
        finally:
            feed.refs -= 1
            if feed.refs == 0 and self._feeds.get(topic.subject) is feed:
                del self._feeds[topic.subject]
                if feed.task is not None:
                    feed.task.cancel()
