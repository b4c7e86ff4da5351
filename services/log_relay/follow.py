"""One client's event stream: history from the stream (or the archive) after its last id,
then live frames from the replica's shared feed, with no gap or duplicate at the seam.

The seam: a client attaches to the feed only when the feed's position is at or below the
client's last id, checked and acted on in one event-loop step; until then it reads the
stream itself with its own (ephemeral) reader, checking after every message.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import msgspec

from services.core.bus import Bus
from services.log_relay.hub import Feed, Hub, HubClosed, Mailbox, Session
from services.log_relay.store import ArchiveStore
from services.log_relay.topics import KEEPALIVE, Frame, Topic, chunk_frame, event

# A catch-up reader hears nothing for this long only if what it was sent to read is gone.
_IDLE_SECONDS = 3.0


async def follow(
    hub: Hub, topic: Topic, session: Session, after: int, keepalive: float
) -> AsyncGenerator[bytes, None]:
    """SSE bytes of `topic` after stream sequence `after`, until its end frame."""
    try:
        async with hub.feed(topic) as feed:
            client = _Client(hub.bus, feed, session, after)
            try:
                async with aclosing(client.catch_up()) as past:
                    async for frame in past:
                        yield frame.payload
                        if frame.end:
                            return
                async with aclosing(client.live(keepalive)) as live:
                    async for payload in live:
                        yield payload
            finally:
                client.detach()
    except HubClosed:
        return


class _Client:
    def __init__(self, bus: Bus, feed: Feed, session: Session, after: int) -> None:
        self._bus = bus
        self._feed = feed
        self._session = session
        self._last = after
        self._box: Mailbox | None = None

    async def catch_up(self) -> AsyncGenerator[Frame, None]:
        """Frames from the stream until the client can attach to the feed."""
        feed = self._feed
        while self._box is None:
            if feed.pos <= self._last:
                self._attach()
                return
            before = self._last
            # One live reader, not rounds bounded by "the newest now": on a busy run each
            # such round would end behind the feed again, and might never attach.
            replay = self._bus.replay(feed.topic.subject, self._last + 1,
                                      idle_timeout=_IDLE_SECONDS)
            async with aclosing(replay) as past:
                async for seq, _, data in past:
                    self._last = seq
                    frame = feed.render(seq, data)
                    if frame is not None:
                        yield frame
                    if feed.pos <= self._last:  # and attach before any await: no gap
                        self._attach()
                        break
            if self._box is None and self._last == before:
                # Nothing to read though the feed is ahead: what lay between was purged
                # while we looked. Attach; there is nothing else to send.
                self._attach()

    async def live(self, keepalive: float) -> AsyncGenerator[bytes, None]:
        assert self._box is not None
        while True:
            frame = await self._box.next(keepalive)
            if frame is None:
                yield KEEPALIVE
                continue
            yield frame.payload
            if frame.end:
                return

    def _attach(self) -> None:
        self._box = self._feed.attach(self._session, self._last)

    def detach(self) -> None:
        if self._box is not None:
            self._feed.detach(self._box)


async def from_archive(
    archive: ArchiveStore, run_id: str, after: int
) -> AsyncGenerator[bytes, None]:
    """An archived run's chunks after `after`, then its end event."""
    info = await archive.info(run_id)
    if info is None:
        return
    async with aclosing(archive.chunks(run_id, after)) as chunks:
        async for chunk in chunks:
            frame = chunk_frame(run_id, chunk)
            yield frame.payload
            if frame.end:
                return
    end = {"run_id": run_id, "state": info.state}
    yield event(info.last_seq, "end", msgspec.json.encode(end))


async def run_log(
    hub: Hub, archive: ArchiveStore, topic: Topic, run_id: str, session: Session,
    after: int, keepalive: float,
) -> AsyncGenerator[bytes, None]:
    """A run's log: from the archive once it holds the whole run (it outlives the
    stream, and reads no JetStream), else from the stream."""
    info = await archive.info(run_id)
    source = (from_archive(archive, run_id, after) if info is not None and not info.truncated
              else follow(hub, topic, session, after, keepalive))
    async with aclosing(source) as frames:
        async for frame in frames:
            yield frame
