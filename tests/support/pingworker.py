"""A consumer process for the bus tests: handles `Ping`s slowly and records the interval
each handler ran in, so a test can check the broker's cap across processes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import ClassVar

from schemas.base import Command
from schemas.streams import ConsumerSpec
from services.core.bus import Bus, Consume, Delivery
from services.core.leases import Leases
from services.core.store import SqliteStore, migrate


class Ping(Command, frozen=True, kw_only=True):
    subject_prefix: ClassVar[str] = "zloth.cmd.test.ping"
    n: int

    def msg_id(self) -> str:
        return f"ping:{self.n}"


def ping_spec(durable: str = "test-ping", **overrides: float | int) -> ConsumerSpec:
    values: dict[str, object] = {
        "stream": "ZLOTH_CMD", "durable": durable, "filter_subject": "zloth.cmd.test.>",
        "ack_wait_seconds": 1.0, "max_deliver": 3, "backoff_seconds": (0.1,),
    }
    values.update(overrides)
    return ConsumerSpec(**values)  # type: ignore[arg-type]


async def main(url: str, out: Path, max_ack_pending: int, work_seconds: float) -> None:
    bus = await Bus.connect(url, name=f"pingworker-{out.stem}")
    store = await SqliteStore.open(out.with_suffix(".sqlite3"))
    await migrate(store, "core", "services.core.store")

    async def handle(ping: Ping, delivery: Delivery) -> None:
        started = time.time()
        await asyncio.sleep(work_seconds)
        with out.open("a") as fh:
            fh.write(json.dumps({"n": ping.n, "start": started, "end": time.time()}) + "\n")

    spec = ping_spec(max_ack_pending=max_ack_pending, ack_wait_seconds=5.0)
    stopping = asyncio.Event()
    registration = Consume(spec, Ping, handle, concurrency=max_ack_pending)
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    print("ready", flush=True)
    await bus.consume(registration, stopping, Leases(store, out.stem))
    await bus.close()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
