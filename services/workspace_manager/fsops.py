"""Filesystem helpers of the workspace-manager: flocks shared by every process on a host
(several replicas share one disk), disk usage, removal of trees an agent left read-only."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path


@contextlib.asynccontextmanager
async def host_lock(path: Path) -> AsyncIterator[None]:
    """Hold an exclusive flock on `path`, shared by every process on this host.

    The wait happens in a worker thread so the event loop never blocks.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        await _flock(fd)
    except asyncio.CancelledError:
        raise  # the descriptor now belongs to the waiting thread's callback
    except BaseException:
        os.close(fd)
        raise
    try:
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


@contextlib.contextmanager
def try_host_lock(path: Path) -> Iterator[bool]:
    """Yield True holding `path`'s flock, or False at once when another holder has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


async def _flock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    # run_in_executor rather than asyncio.to_thread: a plain future can be shielded and given
    # a callback without wrapping it in a task.
    future = asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        # A blocked flock() cannot be interrupted: once it returns, close the descriptor,
        # which releases the lock nobody is waiting for any more.
        future.add_done_callback(lambda _: os.close(fd))
        raise


def disk_usage(path: Path) -> int:
    """Bytes of disk used under `path`; hard-linked files (shared with others) not counted."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:  # removed while we walked
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(entry.path))
            elif st.st_nlink == 1:
                total += st.st_blocks * 512
    return total


async def remove_tree(path: Path) -> None:
    """Remove `path` (file, symlink or tree, read-only parts included) if it exists."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        await asyncio.to_thread(shutil.rmtree, path, onerror=_make_writable_and_retry)


def _make_writable_and_retry(func: Callable[[str], object], name: str, _exc: object) -> None:
    # An agent may leave read-only directories behind; rmtree needs to write into them.
    with contextlib.suppress(OSError):
        os.chmod(os.path.dirname(name), 0o700)
    func(name)
