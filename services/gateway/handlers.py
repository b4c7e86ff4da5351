"""Event handlers: RunStateChanged keeps the runs read model (newest version wins, whatever
order or how many times events arrive)."""

from __future__ import annotations

from schemas.runs import RunStateChanged
from services.core.bus import Delivery
from services.core.telemetry import get_logger
from services.gateway.idempotency import Clock
from services.gateway.store import GatewayStore


class RunEvents:
    def __init__(self, store: GatewayStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._log = get_logger(service="gateway", component="read_model")

    async def on_run_state_changed(self, msg: RunStateChanged, delivery: Delivery) -> None:
        applied = await self._store.apply_run_event(msg, self._clock())
        self._log.debug(
            "run_state_applied" if applied else "run_state_outdated",
            run_id=msg.run_id, state=msg.state, version=msg.version,
        )
