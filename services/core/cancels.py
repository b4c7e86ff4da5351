"""Cancellation that a library's `asyncio.wait_for` can lose.

nats-py waits for every reply (publish ack, KV op, fetch) with `asyncio.wait_for`. On
Python 3.11 that returns the reply and drops a cancellation that arrives in the same loop
turn as the reply (CPython gh-86296, fixed in 3.12 by gh-96764). The cancelled task then
runs on as if nothing happened: seen here as a log flush timer that outlived its batcher
and left an agent run's handler waiting forever. `keep_cancellation` raises the lost
cancellation again once the call returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["keep_cancellation"]

T = TypeVar("T")


async def keep_cancellation(awaitable: Awaitable[T]) -> T:
    """Await `awaitable`; if the current task was asked to cancel meanwhile and the
    request was swallowed underneath, raise CancelledError instead of returning."""
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await awaitable
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result
