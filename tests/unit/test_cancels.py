"""keep_cancellation: a cancel that asyncio.wait_for swallows (Python 3.11) is raised again."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from services.core.cancels import keep_cancellation


async def _cancel_as_the_reply_lands(
    wrap: Callable[[Awaitable[str]], Coroutine[Any, Any, str]],
) -> asyncio.Task[str]:
    """A task waiting on wait_for(reply), cancelled in the loop turn the reply arrives."""
    reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(wrap(asyncio.wait_for(reply, 30)))
    await asyncio.sleep(0)  # the task now waits on the reply
    reply.set_result("ack")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return task


async def _plain(awaitable: Awaitable[str]) -> str:
    return await awaitable


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps the cancel since 3.12")
async def test_plain_wait_for_loses_the_cancel_on_this_python() -> None:
    """The CPython bug (gh-86296) the helper exists for, shown on 3.11."""
    task = await _cancel_as_the_reply_lands(_plain)
    assert not task.cancelled() and task.result() == "ack"


async def test_keep_cancellation_raises_the_lost_cancel() -> None:
    task = await _cancel_as_the_reply_lands(keep_cancellation)
    assert task.cancelled()


async def test_keep_cancellation_returns_the_result_when_nobody_cancels() -> None:
    async def answer() -> str:
        await asyncio.sleep(0)
        return "ack"

    assert await keep_cancellation(answer()) == "ack"


async def test_a_cancel_handled_before_the_call_is_not_raised_again() -> None:
    """Only a cancel requested during the call counts (timeout() uncancels its own)."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    async def answer() -> str:
        return "ack"

    assert await keep_cancellation(answer()) == "ack"
