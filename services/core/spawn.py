"""Start subprocesses from the event loop the cheap way, on any loop (asyncio or uvloop).

uvloop spawns through libuv's fork(), which copies the page tables of the whole
(large, every-service) process for each git or agent launch; measured here it made
dispatch slower under uvloop than under asyncio's loop. CPython's `subprocess` uses
vfork/posix_spawn. So: `subprocess.Popen` for the spawn, the loop's pipe transports for
the streams, and a pidfd watched by the loop for the exit — no thread per child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL


class Child:
    """The parts of `asyncio.subprocess.Process` zloth uses."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._exited: asyncio.Future[int] | None = None

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        if self._popen.returncode is not None:
            return self._popen.returncode
        if self._exited is None:
            self._exited = _watch_exit(self._popen)
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


async def spawn(
    argv: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: int | None = DEVNULL,
    stdout: int | None = PIPE,
    stderr: int | None = PIPE,
    start_new_session: bool = False,
    limit: int = 2**16,
) -> Child:
    """Start `argv`; PIPE streams come back as asyncio streams on the running loop."""
    popen = subprocess.Popen(  # noqa: ASYNC220  argv lists only; vfork is the point
        list(argv), cwd=cwd, env=dict(env) if env is not None else None, stdin=stdin,
        stdout=stdout, stderr=stderr, start_new_session=start_new_session, close_fds=True,
    )
    child = Child(popen)
    loop = asyncio.get_running_loop()
    try:
        if popen.stdout is not None:
            child.stdout = await _reader(loop, popen.stdout, limit)
        if popen.stderr is not None:
            child.stderr = await _reader(loop, popen.stderr, limit)
        if popen.stdin is not None:
            child.stdin = await _writer(loop, popen.stdin)
    except BaseException:
        popen.kill()
        await child.wait()
        raise
    return child


async def _reader(
    loop: asyncio.AbstractEventLoop, pipe: IO[bytes], limit: int
) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    return reader


async def _writer(loop: asyncio.AbstractEventLoop, pipe: IO[bytes]) -> asyncio.StreamWriter:
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(loop=loop), pipe
    )
    return asyncio.StreamWriter(transport, protocol, None, loop)


def _watch_exit(popen: subprocess.Popen[bytes]) -> asyncio.Future[int]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel): a thread waits instead
        task = loop.run_in_executor(None, popen.wait)
        task.add_done_callback(lambda t: done.set_result(t.result()) if not done.done() else None)
        return done

    def exited(*_: Any) -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not done.done():
            done.set_result(popen.wait())

    loop.add_reader(pidfd, exited)
    return done
