"""Whether an executor's program is installed on this runner, and which version it is
(`<program> --version`, once per runner: a CLI can take a second to start)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile

from services.executor_runner.executors import ExecutorSpec

__all__ = ["Installed", "installed", "probe", "probe_all"]

_VERSION = re.compile(r"\d+\.\d+\.\d+[0-9A-Za-z.+-]*")
_TIMEOUT = 30.0

Installed = tuple[bool, str | None]


def installed(spec: ExecutorSpec) -> bool:
    return spec.adapter == "patch" or shutil.which(spec.command[0]) is not None


async def probe_all(specs: dict[str, ExecutorSpec]) -> dict[str, Installed]:
    """`probe` each distinct program once (several executors may share one CLI)."""
    by_program: dict[tuple[str, str, str | None], list[str]] = {}
    for name, spec in specs.items():
        by_program.setdefault((spec.command[0], spec.adapter, spec.version), []).append(name)
    found = await asyncio.gather(*(probe(specs[names[0]]) for names in by_program.values()))
    return {name: result for names, result in zip(by_program.values(), found, strict=True)
            for name in names}


async def probe(spec: ExecutorSpec) -> Installed:
    """(installed, version). The version is asked only of CLI adapters (a generic
    command may not know `--version`), in a throwaway HOME so that nothing is written to
    ours, and never raises: a broken install reads as installed without a version."""
    if spec.adapter == "patch":  # runs inside the runner: always there
        return True, "builtin"
    program = shutil.which(spec.command[0])
    if program is None:
        return False, None
    if spec.adapter == "generic":
        return True, spec.version
    with tempfile.TemporaryDirectory(prefix="zloth-probe-") as home:
        env = {"HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": home,
               "DISABLE_AUTOUPDATER": "1"}
        proc = await asyncio.create_subprocess_exec(
            program, "--version", env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(_TIMEOUT):
                out, _ = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return True, None
    match = _VERSION.search(out.decode(errors="replace"))
    return True, match.group(0) if match else None
