"""One client's event stream: history from the stream (or the archive) after its last id,
then live frames from the replica's shared feed, with no gap or duplicate at the seam.

The seam: a client attaches to the feed only when the feed's position is at or below the
client's last id, checked and acted on in one event-loop step; until then it reads the
stream itself, up to the newest message, and checks again (the feed moves meanwhile).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import msgspec

from services.log_relay.hub import Hub, HubClosed, Session
from services.log_relay.reader import last_seq, read_range
from services.log_relay.store import ArchiveStore
from services.log_relay.topics import KEEPALIVE, Topic, chunk_frame, event


async def follow(
    hub: Hub, topic: Topic, session: Session, after: int, keepalive: float
) -> AsyncGenerator[bytes, None]:
    """SSE bytes of `topic` after stream sequence `after`, until its end frame."""
    try:
        async with hub.feed(topic) as feed:
            last = after
            while feed.pos > last:
                before = last
                target = await last_seq(hub.bus, topic.stream, topic.subject)
                async with aclosing(read_range(hub.bus, topic.subject, last, target)) as past:
                    async for seq, data in past:
                        last = seq
                        frame = feed.render(seq, data)
                        if frame is None:
                            continue
                        yield frame.payload
                        if frame.end:
                            return
                if last == before:
                    break  # what lay between was purged while we looked: nothing to send
            box = feed.attach(session, last)
            try:
                while True:
                    live = await box.next(keepalive)
                    if live is None:
                        yield KEEPALIVE
                        continue
                    yield live.payload
                    if live.end:
                        return
            finally:
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
