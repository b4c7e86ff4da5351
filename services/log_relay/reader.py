"""Bounded reads of one filtered stream: "the messages after seq A up to seq B". `Bus.replay`
alone follows forever; history pages and the archiver need an end (B: the subject's last
message, looked up first, or the run's final chunk)."""

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
