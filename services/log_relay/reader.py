"""Bounded reads of one filtered stream: "everything after seq A up to the newest message
there is now". `Bus.replay` alone follows forever; catch-up, history pages and the
archiver need an end, which is the subject's last sequence looked up first."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from services.core.bus import Bus

# Only reached if messages vanish (purge, expiry) while being read: the last one we were
# told about no longer exists, so no message will ever say "you are at the end".
_IDLE_BACKSTOP_SECONDS = 3.0


async def read_range(
    bus: Bus, subject: str, after: int, until: int
) -> AsyncGenerator[tuple[int, bytes], None]:
    """Yield `(stream_seq, data)` of the messages on `subject` with after < seq <= until."""
    if until <= after:
        return
    replay = bus.replay(subject, after + 1, idle_timeout=_IDLE_BACKSTOP_SECONDS)
    async with aclosing(replay) as messages:
        async for seq, pending, data in messages:
            if seq > until:
                return
            yield seq, data
            # pending == 0: nothing newer exists, even if `until` itself was purged.
            if seq >= until or pending == 0:
                return


async def last_seq(bus: Bus, stream: str, subject: str) -> int:
    """The stream sequence of the newest message on `subject`, 0 when there is none."""
    found = await bus.last_message(stream, subject)
    return found[0] if found is not None else 0
