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

from services.log_relay.hub import Hub, HubClosed, Mailbox, Session
from services.log_relay.store import ArchiveStore
from services.log_relay.topics import KEEPALIVE, Topic, chunk_frame, event

# A catch-up reader hears nothing for this long only if what it was sent to read is gone.
_IDLE_SECONDS = 3.0


async def follow(
    hub: Hub, topic: Topic, session: Session, after: int, keepalive: float
) -> AsyncGenerator[bytes, None]:
    """SSE bytes of `topic` after stream sequence `after`, until its end frame."""
    box: Mailbox | None = None
    try:
        async with hub.feed(topic) as feed:
            try:
                last = after
                while box is None:
                    if feed.pos <= last:
                        box = feed.attach(session, last)
                        break
                    before = last
                    # One live reader, not rounds bounded by "the newest now": on a busy
                    # run each round would end behind the feed again, and never attach.
                    replay = hub.bus.replay(topic.subject, last + 1, idle_timeout=_IDLE_SECONDS)
                    async with aclosing(replay) as past:
                        async for seq, _, data in past:
                            last = seq
                            frame = feed.render(seq, data)
                            if frame is not None:
                                yield frame.payload
                                if frame.end:
                                    return
                            if feed.pos <= last:  # attach before any await: no gap
                                box = feed.attach(session, last)
                                break
                    if box is None and last == before:
                        # Nothing to read though the feed is ahead: what lay between was
                        # purged while we looked. Attach; there is nothing else to send.
                        box = feed.attach(session, last)
                while True:
                    live = await box.next(keepalive)
                    if live is None:
                        yield KEEPALIVE
                        continue
                    yield live.payload
                    if live.end:
                        return
            finally:
                if box is not None:
                    feed.detach(box)
    except HubClosed:
        return


async def from_archive(
    archive: ArchiveStore, run_id: str, after: int
) -> AsyncGenerator[bytes, None]:
    """An archived run's chunks after `after`, then its end event."""
    info = await archive.info(run_id)
    if info is None:
        return
    async for chunk in archive.chunks(run_id, after):
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
