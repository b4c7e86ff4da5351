"""Run git as a subprocess, hardened against repositories a hostile agent has edited.

Errors: `GitError` (non-zero exit, or `GitTimeout` when the deadline passed and git was killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import msgspec

from services.core.spawn import DEVNULL, PIPE, Child, spawn

# Config given on the command line wins over every config file, so these neutralise what an
# agent may have written into `.git/config` (hooks, fsmonitor, ssh/askpass/credential
# programs, ext:: transport). Note `diff.external=` makes a porcelain diff fail ("external diff
# died") unless `--no-ext-diff` is passed: that is deliberate, it fails closed.
SAFE_CONFIG: tuple[str, ...] = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=",
    "core.sshCommand=ssh",
    "core.askPass=",
    "core.untrackedCache=false",
    "core.attributesFile=/dev/null",
    "core.excludesFile=/dev/null",
    "credential.helper=",
    "protocol.ext.allow=never",
    "diff.external=",
    "commit.gpgsign=false",
    "tag.gpgsign=false",
    "submodule.recurse=false",
    "maintenance.auto=false",
)

# Fixed environment: no system or global config (a developer's ~/.gitconfig must not change
# what zloth commits), never prompt, a fixed identity, stable messages for error reports.
_FIXED_ENV: dict[str, str] = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "",  # empty but set: git then ignores core.askPass and SSH_ASKPASS
    "GIT_EDITOR": "true",
    "GIT_PAGER": "cat",
    "GIT_AUTHOR_NAME": "zloth",
    "GIT_AUTHOR_EMAIL": "zloth@localhost",
    "GIT_COMMITTER_NAME": "zloth",
    "GIT_COMMITTER_EMAIL": "zloth@localhost",
    "LC_ALL": "C",
}

# Inherited variables that would redirect git (GIT_DIR, GIT_INDEX_FILE, GIT_CONFIG_PARAMETERS,
# GIT_EXTERNAL_DIFF, GIT_SSH_COMMAND, …) or run a program: dropped from the service's env.
_DROPPED_ENV_PREFIXES = ("GIT_",)
_DROPPED_ENV = frozenset({"SSH_ASKPASS", "PAGER", "EDITOR", "VISUAL"})

_STDERR_LIMIT = 64 * 1024


class GitResult(msgspec.Struct, frozen=True):
    stdout: str  # decoded with surrogateescape: paths round-trip back into argv losslessly
    stderr: str
    code: int
    truncated: bool = False  # stdout was cut at `max_stdout` bytes and git was stopped


class GitError(Exception):
    """git exited non-zero (with check=True)."""

    def __init__(self, args: list[str], code: int, stderr: str) -> None:
        super().__init__(args, code, stderr)
        self.git_args = args
        self.code = code
        self.stderr = stderr

    def __str__(self) -> str:
        tail = self.stderr.strip()[-2000:]
        return f"git {' '.join(self.git_args)} failed with exit code {self.code}: {tail}"


class GitTimeout(GitError):
    """git ran past its deadline and was killed."""


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every git call gets: the service's, minus git's, plus the fixed one."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_DROPPED_ENV_PREFIXES) and k not in _DROPPED_ENV
    }
    env.update(_FIXED_ENV)
    if extra:
        env.update(extra)
    return env


def git_argv(args: list[str]) -> list[str]:
    argv = ["git"]
    for item in SAFE_CONFIG:
        argv += ["-c", item]
    return argv + args


async def run_git(
    args: list[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 300,  # noqa: ASYNC109 -- a default deadline per call; callers may add theirs
    input: bytes | None = None,
    max_stdout: int | None = None,
) -> GitResult:
    """Run `git <SAFE_CONFIG> args` in `cwd`; raise GitError on failure when `check`.

    `max_stdout` bounds memory for outputs an agent controls the size of (a diff of a 2 GB
    file): reading stops there, git is stopped and the result says `truncated`.
    """
    extra = dict(env or {})
    if cwd is not None:
        # A workspace whose .git was deleted must not make git find an enclosing repository.
        extra.setdefault("GIT_CEILING_DIRECTORIES", str(Path(cwd).absolute().parent))
    proc = await spawn(
        git_argv(args),
        cwd=cwd,
        env=git_env(extra),
        stdin=PIPE if input is not None else DEVNULL,
        start_new_session=True,  # its own process group: a kill reaches ssh / pack-objects too
    )
    try:
        async with asyncio.timeout(timeout):
            out, err, truncated = await _communicate(proc, input, max_stdout)
            code = await proc.wait()
    except TimeoutError:
        await _kill(proc)
        raise GitTimeout(args, -signal.SIGKILL, f"timed out after {timeout} s") from None
    except BaseException:
        await _kill(proc)  # cancelled: never leave git running behind us
        raise
    if truncated:
        code = 0 if code in (0, -signal.SIGKILL, -signal.SIGPIPE) else code
    result = GitResult(
        stdout=out.decode("utf-8", "surrogateescape"),
        stderr=err.decode("utf-8", "replace"),
        code=code,
        truncated=truncated,
    )
    if check and code != 0:
        raise GitError(args, code, result.stderr)
    return result


async def _communicate(
    proc: Child, data: bytes | None, max_stdout: int | None
) -> tuple[bytes, bytes, bool]:
    assert proc.stdout is not None
    assert proc.stderr is not None
    async with asyncio.TaskGroup() as tg:
        if data is not None:
            tg.create_task(_feed(proc, data))
        err_task = tg.create_task(_drain(proc.stderr, _STDERR_LIMIT))
        out, truncated = await _read_stdout(proc, max_stdout)
    return out, err_task.result(), truncated


async def _read_stdout(proc: Child, limit: int | None) -> tuple[bytes, bool]:
    assert proc.stdout is not None
    if limit is None:
        return await proc.stdout.read(), False
    buf = bytearray()
    while len(buf) <= limit and (chunk := await proc.stdout.read(65536)):
        buf += chunk
    if len(buf) <= limit:
        return bytes(buf), False
    _killpg(proc)  # the caller has all it wants; git would otherwise block on a full pipe
    return bytes(buf[:limit]), True


async def _drain(stream: asyncio.StreamReader, keep: int) -> bytes:
    """Read to EOF (so git never blocks on a full pipe), keeping the first `keep` bytes."""
    buf = bytearray()
    while chunk := await stream.read(65536):
        if len(buf) < keep:
            buf += chunk[: keep - len(buf)]
    return bytes(buf)


async def _feed(proc: Child, data: bytes) -> None:
    assert proc.stdin is not None
    # git may exit before reading all its input (an error): that is reported by its exit code.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data)
        await proc.stdin.drain()
    proc.stdin.close()


def _killpg(proc: Child) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _kill(proc: Child) -> None:
    _killpg(proc)  # even if git itself is gone: what it started may still hold our pipes
    # Shielded so a second cancellation cannot leave a zombie behind.
    await asyncio.shield(proc.wait())
