"""Find processes by a token in their command line (agents carry it in their argv; the
token is made at run time, so no other process names it)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


def pids_with(token: str) -> list[int]:
    found = []
    needle = token.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


async def wait_no_process_with(token: str, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while pids_with(token):
            await asyncio.sleep(0.1)
