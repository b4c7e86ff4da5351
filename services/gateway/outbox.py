"""The accepted-runs outbox: publish a message's StartRuns right after the accept commits,
and a reconciler that publishes again any the scheduler has not answered (version 0) once due.

Publishing again is harmless: the stream deduplicates by `Nats-Msg-Id` and the scheduler is
idempotent per run. This is what makes every 2xx the gateway answered reach a terminal state
when a publish, or the scheduler's copy, was lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec

from schemas.runs import StartRun
from schemas.streams import CMD
from services.core.bus import Bus
from services.core.errors import BackpressureError, BusError
from services.core.runtime import sleep_or_stop
from services.core.telemetry import get_logger
from services.gateway.idempotency import Clock
from services.gateway.store import GatewayStore, OutboxItem

DISPATCH_GRACE_SECONDS = 2.0  # the request publishes first; the reconciler after this
PUBLISH_BUDGET_SECONDS = 10.0  # all of one request's publishes; past it, the outbox goes on
CLAIM_SECONDS = 30.0  # longer than any publish can take


@dataclass(frozen=True)
class Published:
    """How a request's publishes went: `refused` is the error when none left for sure."""

    run_ids: list[str]
    refused: BusError | None = None


def surely_not_sent(exc: BaseException) -> bool:
    """True when the server refused the message (full queue, no stream, connection closed
    before sending). A timeout is ambiguous: the message may be stored with its ack lost, and
    nats-py buffers publishes while reconnecting, so it may still go out."""
    if isinstance(exc, BackpressureError):
        return True
    if isinstance(exc, TimeoutError):
        return False
    return isinstance(exc, BusError) and not isinstance(exc.__cause__, TimeoutError)


class Outbox:
    def __init__(
        self, store: GatewayStore, bus: Bus, clock: Clock, *, redispatch_after: float
    ) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._redispatch_after = redispatch_after
        self._log = get_logger(service="gateway", component="outbox")

    async def publish_accepted(self, commands: Sequence[StartRun]) -> Published:
        """Publish a fresh accept's StartRuns in order; stop at the first failure (the
        reconciler delivers the rest)."""
        sent: list[str] = []
        failure: BaseException | None = None
        try:
            async with asyncio.timeout(PUBLISH_BUDGET_SECONDS):
                for command in commands:
                    await self._bus.publish(command)
                    sent.append(command.run_id)
        except (BusError, TimeoutError) as exc:
            failure = exc
            self._log.warning("start_run_publish_failed", error=str(exc), published=len(sent))
        if sent:
            now = self._clock().timestamp()
            await self._store.mark_dispatched([(r, 0) for r in sent], now, self._redispatch_after)
        refused = failure if isinstance(failure, BusError) and surely_not_sent(failure) else None
        return Published(run_ids=sent, refused=None if sent else refused)

    async def reconcile(self, stopping: asyncio.Event, period: float) -> None:
        await every(period, stopping, self.sweep, "outbox_sweep_failed")

    async def sweep(self) -> int:
        """Publish every due run; return how many went out."""
        now = self._clock().timestamp()
        sent = 0
        for item in await self._store.outbox_due(now):
            claimed_until = now + CLAIM_SECONDS
            if not await self._store.claim_dispatch(item, claimed_until):
                continue  # another publisher has it
            try:
                published = await self._publish(item)
            except BusError as exc:
                self._log.warning("start_run_republish_failed", run_id=item.run_id, error=str(exc))
                await self._store.release_dispatch(item.run_id, claimed_until, now)
                break  # the bus is in trouble: the next sweep tries again
            at = self._clock().timestamp()
            if not published:  # still queued: the scheduler has not got to it yet
                await self._store.release_dispatch(
                    item.run_id, claimed_until, at + self._redispatch_after
                )
                continue
            await self._store.mark_dispatched(
                [(item.run_id, item.dispatch_count)], at, self._redispatch_after
            )
            sent += 1
        if sent:
            self._log.info("start_runs_republished", count=sent)
        return sent

    async def _publish(self, item: OutboxItem) -> bool:
        """Publish a run nobody published yet under its own msg id (the stream drops it if
        an earlier attempt did get through); a run the scheduler took without a word
        again under a fresh one, past the dedup window, unless it is still queued."""
        command = msgspec.json.decode(item.command, type=StartRun)
        msg_id = None
        if item.dispatched:
            if await self._bus.has_message(CMD.name, command.subject()):
                return False
            msg_id = f"{command.msg_id()}:r{item.dispatch_count}"
        await self._bus.publish(command, correlation=item.correlation_id, msg_id=msg_id)
        return True


async def every(
    period: float, stopping: asyncio.Event, work: Callable[[], Awaitable[object]], failed: str
) -> None:
    """Run `work` every `period` seconds until `stopping` is set."""
    log = get_logger(service="gateway")
    while not stopping.is_set():
        try:
            await work()
        except Exception:  # top of a periodic unit of work: log, try next period
            log.exception(failed)
        await sleep_or_stop(stopping, period)
