"""Runs one agent as a hostile subprocess: own session, rlimits, timeouts, and a kill that
reaches every process it started, even one that setsid()s away. Pidfiles let a restarted
runner reap what a killed one left behind. Pure asyncio on Linux (/proc, prctl); no NATS."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import os
import re
import resource
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import msgspec

from schemas.executions import ExecutionOutcome
from services.core.spawn import DEVNULL, Child, spawn
from services.executor_runner.proctable import (
    MARKER_VAR,
    MarkerCache,
    Proc,
    ProcTable,
    Snapshot,
    alive,
    read_stat,
    scan,
    shared_table,
)

__all__ = [
    "MARKER_VAR",
    "Limits",
    "OnLine",
    "ProcessOutcome",
    "kill_recorded",
    "reap_leftovers",
    "run_agent",
]

MiB = 1024 * 1024

OnLine = Callable[[Literal["stdout", "stderr"], str], Awaitable[None]]

_READ_SIZE = 64 * 1024
_POLL = 0.05
_DRAIN_SECONDS = 1.0  # pipes may outlive the agent this long before leftovers are killed
_GONE_TIMEOUT = 2.0  # how long SIGKILLed processes get to disappear from /proc
_KILL_ROUNDS = 5
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Per-run limits. rlimits are per process (a forking agent multiplies them) and
    best effort; cgroups would be the hard boundary.

    memory_bytes → RLIMIT_DATA (private writable memory), not RLIMIT_AS: Node and Go CLIs
    reserve many GiB of address space up front and would not start under RLIMIT_AS.
    max_processes → RLIMIT_NPROC, counted per *user* and ignored for root.
    """

    wall_seconds: float = 3600
    idle_seconds: float = 600
    memory_bytes: int | None = None
    cpu_seconds: int | None = None
    max_processes: int | None = None
    file_size_bytes: int | None = None
    open_files: int | None = 1024
    max_output_bytes: int = 50 * MiB
    kill_grace_seconds: float = 3.0
    max_line_bytes: int = 1 * MiB  # longer lines are split (a JSON event up to this stays whole)
    tree_poll_seconds: float = 0.5


class ProcessOutcome(msgspec.Struct, frozen=True, kw_only=True):
    outcome: ExecutionOutcome
    exit_code: int | None
    reason: str | None
    output_bytes: int
    pid: int
    # a failure worth another attempt, not before this many seconds (an LLM provider's
    # outage or rate limit as the patch agent saw it); None: not retryable
    retry_after_seconds: float | None = None


class _PidRecord(msgspec.Struct, frozen=True, kw_only=True):
    pid: int
    pgid: int
    start_time: int
    marker: str = ""
    owner_pid: int = 0  # the runner that wrote it: a live owner's pidfiles are not reaped
    owner_start_time: int = 0


# ---------------------------------------------------------------------------- /proc
#
# The agent's "family" (all of it is killed: SIGTERM, grace, SIGKILL):
# - its process group and session (start_new_session: pgid == sid == agent pid);
# - its descendants by ppid. The agent is made a child *subreaper* (prctl, kept across
#   exec), so a double-forked grandchild is re-parented to the agent, not to init, and
#   stays a descendant for as long as the agent lives;
# - every process seen in the tree by the periodic poll (Limits.tree_poll_seconds; one
#   walk of /proc per tick shared by every run on the loop: proctable.ProcTable),
#   identified by (pid, start time) so that a reused pid is never hit;
# - every process whose initial environment holds this run's random marker
#   (AGENT_RUN_TOKEN): finds forked daemons after the agent itself has exited;
# - last resort, whoever still holds the agent's stdout/stderr pipes open.
# Signals only ever go to a family found by a fresh walk (`_family`), never to the shared
# snapshot: a stale table must not miss a process nor name a pid reused since.


def _family(
    leader: tuple[int, int], known: Iterable[tuple[int, int]], marker: str, markers: MarkerCache
) -> dict[int, Proc]:
    """The family as of a fresh walk of /proc (see Snapshot.family)."""
    return Snapshot.take(markers).family(leader, known, marker)


def _pipe_holders(inodes: set[int]) -> dict[int, Proc]:
    """Processes with an fd on one of our pipes: an escaper we could not see otherwise."""
    wanted = {f"pipe:[{ino}]" for ino in inodes}
    found: dict[int, Proc] = {}
    for pid, proc in scan().items():
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            fd_dir = f"/proc/{pid}/fd"
            if any(os.readlink(f"{fd_dir}/{fd}") in wanted for fd in os.listdir(fd_dir)):
                found[pid] = proc
    return found


def _send(proc: Proc, sig: int) -> None:
    """Signal exactly this process: through a pidfd checked against the start time, so a
    pid reused since the scan is never hit."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return  # already gone
    try:
        st = read_stat(proc.pid)
        if st is not None and st.start_time == proc.start_time:
            signal.pidfd_send_signal(fd, sig)
    except OSError:
        pass  # exited meanwhile
    finally:
        os.close(fd)


def _signal_family(family: dict[int, Proc], group: int, sig: int) -> list[int]:
    """Signal every member (and the group: it also reaches members forked since the
    scan); returns the members targeted."""
    if any(p.pgid == group for p in family.values()):
        with contextlib.suppress(OSError):
            os.killpg(group, sig)
    for proc in family.values():
        _send(proc, sig)
    return sorted(family)


def _kill_hard(
    leader: tuple[int, int], known: Iterable[tuple[int, int]], marker: str, markers: MarkerCache
) -> list[int]:
    """SIGKILL the family, rescanning a few rounds in case it forked in between."""
    killed: list[int] = []
    known = list(known)
    for _ in range(_KILL_ROUNDS):
        family = _family(leader, known, marker, markers)
        if not family:
            break
        killed += _signal_family(family, leader[0], signal.SIGKILL)
    return sorted(set(killed))


def _wait_gone_sync(leader: tuple[int, int], marker: str, markers: MarkerCache) -> bool:
    deadline = time.monotonic() + _GONE_TIMEOUT
    while _family(leader, (), marker, markers):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


# ----------------------------------------------------------------------- child setup


_LAUNCHER = str(Path(__file__).with_name("launch.py"))


def _rlimits(limits: Limits) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for the launcher to apply in the agent's process."""
    pairs = [
        (resource.RLIMIT_CORE, 0),  # no core dumps of a hostile agent into its workspace
        (resource.RLIMIT_DATA, limits.memory_bytes),
        (resource.RLIMIT_NPROC, limits.max_processes),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files),
    ]
    found = [(res, value, value) for res, value in pairs if value is not None]
    if limits.cpu_seconds is not None:  # SIGXCPU at the soft limit, SIGKILL 2 s later
        found.append((resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 2))
    return found


def _launch_argv(argv: list[str], env: dict[str, str], limits: Limits) -> list[str]:
    """Wrap `argv` in the launcher; a missing program fails here, as a spawn would."""
    if shutil.which(argv[0], path=env.get("PATH")) is None:
        raise FileNotFoundError(errno.ENOENT, "no such program", argv[0])
    return [sys.executable, "-I", "-S", _LAUNCHER, str(os.getpid()),
            json.dumps(_rlimits(limits)), "--", *argv]


# -------------------------------------------------------------------------- pidfiles


def _safe_key(run_key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", run_key).lstrip(".") or "run"


def _pidfile(pidfile_dir: Path, run_key: str) -> Path:
    return pidfile_dir / f"{_safe_key(run_key)}.json"


def _write_pidfile(path: Path, record: _PidRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(record))
    os.replace(tmp, path)  # atomic: a reaper never reads half a file


def _kill_record(path: Path, respect_owner: bool) -> list[int] | None:
    """SIGKILL what a pidfile describes; None when skipped because its runner still lives."""
    try:
        rec = msgspec.json.decode(path.read_bytes(), type=_PidRecord)
    except (OSError, msgspec.DecodeError):
        path.unlink(missing_ok=True)
        return []
    if respect_owner and rec.owner_pid and alive(rec.owner_pid, rec.owner_start_time):
        return None
    current = read_stat(rec.pid)
    if current is not None and current.start_time != rec.start_time:
        path.unlink(missing_ok=True)  # pid reused: the recorded group is already empty
        return []
    leader = (rec.pid, rec.start_time)
    markers = MarkerCache()  # environments read once for all the rounds below
    killed = _kill_hard(leader, (), rec.marker, markers)
    if _wait_gone_sync(leader, rec.marker, markers):
        path.unlink(missing_ok=True)  # otherwise keep it: the next start tries again
    return killed


def reap_leftovers(pidfile_dir: Path) -> list[int]:
    """At runner startup: SIGKILL the families recorded by pidfiles of dead runners
    (leader still alive with the recorded start time, or leader gone but its group left),
    remove those pidfiles, and return the pids killed."""
    if not pidfile_dir.is_dir():
        return []
    killed: list[int] = []
    for path in sorted(pidfile_dir.glob("*.json")):
        killed += _kill_record(path, respect_owner=True) or []
    return sorted(set(killed))


def kill_recorded(pidfile_dir: Path, run_key: str) -> list[int]:
    """SIGKILL the family recorded for one run (before re-running a redelivered attempt),
    whoever recorded it; returns the pids killed."""
    path = _pidfile(pidfile_dir, run_key)
    if not path.exists():
        return []
    return _kill_record(path, respect_owner=False) or []


# ------------------------------------------------------------------------------- run

_Verdict = tuple[ExecutionOutcome, str]
_Stream = Literal["stdout", "stderr"]


def _split_cut(buf: bytearray, end: int) -> int:
    """Where to cut before `end` so that no UTF-8 sequence is cut in two: step back (at
    most 3 bytes) while buf[end] is a continuation byte. Needs len(buf) > end."""
    cut = end
    while cut > end - 3 and (buf[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut


def _exit_reason(code: int | None, last_stderr: str | None) -> str:
    if code is None:
        reason = "exit status unknown"
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        reason = f"killed by {name} (exit code {code})"
    else:
        reason = f"exit code {code}"
    return f"{reason}: {last_stderr[:500]}" if last_stderr else reason


class _AgentRun:
    """One supervised agent process; `run()` is the whole lifecycle."""

    def __init__(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        on_line: OnLine,
        limits: Limits,
        cancel: asyncio.Event,
        pidfile: Path | None,
        table: ProcTable,
    ) -> None:
        self._argv, self._cwd, self._on_line = argv, cwd, on_line
        self._limits, self._cancel, self._pidfile = limits, cancel, pidfile
        self._table = table
        self._marker = uuid.uuid4().hex
        self._env = {**env, MARKER_VAR: self._marker}
        self._loop = asyncio.get_running_loop()
        self._leader = (0, -1)
        # every (pid, start time) ever seen in the family → when (time.monotonic()) it was
        # first seen: an entry older than a snapshot and absent from it is gone for good
        self._known: dict[tuple[int, int], float] = {}
        self._inodes: set[int] = set()
        self._output_bytes = 0
        self._last_output = self._loop.time()
        self._capped = asyncio.Event()
        self._last_stderr: str | None = None

    async def run(self) -> ProcessOutcome:
        try:
            proc, streams, transports = await self._spawn()
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            return ProcessOutcome(
                outcome="failed",
                exit_code=None,
                reason=f"could not start agent: {exc}",
                output_bytes=0,
                pid=0,
            )
        pumps = [asyncio.create_task(self._pump(name, reader)) for name, reader in streams]
        exited = asyncio.create_task(proc.wait())
        try:
            self._record(proc.pid)
            self._table.join(self)
            verdict = await self._supervise(exited, pumps)
            if verdict is None:
                await self._drain(pumps, _DRAIN_SECONDS)
            await self._terminate()  # after a normal exit: only leftovers, usually nothing
            await self._close_pipes(pumps)
            await asyncio.wait([exited], timeout=_GONE_TIMEOUT)
        except BaseException:
            await self._terminate()  # runner shutdown or a failing on_line: nothing may survive
            raise
        finally:
            await self._cleanup([*pumps, exited], transports)
        return self._outcome(verdict, proc.returncode)

    async def _spawn(
        self,
    ) -> tuple[
        Child,
        list[tuple[_Stream, asyncio.StreamReader]],
        list[asyncio.ReadTransport],
    ]:
        # our own pipes rather than PIPE: we own their lifetime and know their inodes
        streams: list[tuple[_Stream, asyncio.StreamReader]] = []
        transports: list[asyncio.ReadTransport] = []
        write_fds: list[int] = []
        try:
            for name in ("stdout", "stderr"):
                read_fd, write_fd = os.pipe()
                write_fds.append(write_fd)
                self._inodes.add(os.fstat(read_fd).st_ino)
                reader = asyncio.StreamReader(limit=_READ_SIZE)
                transport, _ = await self._loop.connect_read_pipe(
                    functools.partial(asyncio.StreamReaderProtocol, reader),
                    os.fdopen(read_fd, "rb", buffering=0),
                )
                transports.append(transport)
                streams.append((name, reader))
            proc = await spawn(
                _launch_argv(self._argv, self._env, self._limits),
                cwd=self._cwd,
                env=self._env,
                stdin=DEVNULL,
                stdout=write_fds[0],
                stderr=write_fds[1],
                start_new_session=True,
            )
        except BaseException:
            for transport in transports:
                transport.close()
            raise
        finally:
            for fd in write_fds:
                os.close(fd)
        return proc, streams, transports

    def _record(self, pid: int) -> None:
        st = read_stat(pid)  # None if it is already gone and reaped
        self._leader = (pid, st.start_time if st else -1)
        self._known[self._leader] = time.monotonic()
        self._last_output = self._loop.time()
        if self._pidfile is not None:
            owner = read_stat(os.getpid())
            _write_pidfile(
                self._pidfile,
                _PidRecord(
                    pid=pid,
                    pgid=pid,
                    start_time=self._leader[1],
                    marker=self._marker,
                    owner_pid=os.getpid(),
                    owner_start_time=owner.start_time if owner else 0,
                ),
            )

    async def _supervise(
        self, exited: asyncio.Task[int], pumps: list[asyncio.Task[None]]
    ) -> _Verdict | None:
        """Wait until the agent exits by itself (None) or has to be stopped (why)."""
        lim = self._limits
        wall_deadline = self._loop.time() + lim.wall_seconds
        alarms = [
            asyncio.create_task(self._cancel.wait()),
            asyncio.create_task(self._capped.wait()),
        ]
        try:
            while True:
                now = self._loop.time()
                idle_deadline = self._last_output + lim.idle_seconds
                if self._capped.is_set():
                    return "failed", "output cap exceeded"
                if self._cancel.is_set():
                    return "canceled", "canceled"
                if now >= wall_deadline:
                    return "timed_out", f"wall-clock timeout after {lim.wall_seconds:g}s"
                if now >= idle_deadline:
                    return "timed_out", f"no output for {lim.idle_seconds:g}s"
                waiting = {exited, *alarms, *(p for p in pumps if not p.done())}
                done, _ = await asyncio.wait(
                    waiting,
                    timeout=min(wall_deadline, idle_deadline) - now,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done.intersection(pumps):
                    task.result()  # re-raises a failing on_line
                if exited in done:
                    return None
        finally:
            for alarm in alarms:
                alarm.cancel()
            await asyncio.gather(*alarms, return_exceptions=True)

    async def _pump(self, stream: _Stream, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        line_limit, cap = self._limits.max_line_bytes, self._limits.max_output_bytes
        while chunk := await reader.read(_READ_SIZE):
            self._last_output = self._loop.time()
            self._output_bytes += len(chunk)
            if self._output_bytes > cap:
                if self._capped.is_set():
                    continue  # keep draining so the pipe still reaches EOF
                self._capped.set()
                chunk = chunk[: max(0, len(chunk) - (self._output_bytes - cap))]
            buf += chunk
            start = 0
            while (newline := buf.find(b"\n", start)) >= 0:
                await self._emit(stream, buf[start:newline])
                start = newline + 1
            del buf[:start]
            if len(buf) > line_limit:  # a line still growing: pass on its full pieces
                cut = await self._emit(stream, buf, partial=True)
                del buf[:cut]
        if buf:
            await self._emit(stream, buf)

    async def _emit(self, stream: _Stream, raw: bytearray, partial: bool = False) -> int:
        """A line to on_line in pieces of at most max_line_bytes; with `partial`, keep the
        last piece back (the line goes on). Returns how many bytes were passed on."""
        limit, start = self._limits.max_line_bytes, 0
        while len(raw) - start > limit:
            cut = _split_cut(raw, start + limit)
            cut = cut if cut > start else start + limit  # limit < 4: cut inside the char
            await self._emit_piece(stream, raw[start:cut])
            start = cut
        if not partial:
            await self._emit_piece(stream, raw[start:])
            start = len(raw)
        return start

    async def _emit_piece(self, stream: _Stream, raw: bytearray) -> None:
        text = raw.decode("utf-8", errors="replace").removesuffix("\r")
        if stream == "stderr" and text.strip():
            self._last_stderr = text
        await self._on_line(stream, text)

    @property
    def interval(self) -> float:
        return self._limits.tree_poll_seconds

    def observe(self, snapshot: Snapshot) -> None:
        """The table's periodic poll: remember every process seen in the family, so an
        escaper stays known once the agent (its subreaper) has exited; forget the ones
        gone (so `_known` does not grow with every short-lived process of a long run)."""
        self._remember(snapshot.family(self._leader, self._known, self._marker))
        procs, taken_at = snapshot.procs, snapshot.taken_at
        for key, seen_at in list(self._known.items()):
            if seen_at >= taken_at:
                continue  # seen by a walk newer than this snapshot
            proc = procs.get(key[0])
            if proc is None or proc.start_time != key[1]:
                del self._known[key]

    def _remember(self, family: dict[int, Proc]) -> None:
        now = time.monotonic()
        for proc in family.values():
            self._known.setdefault((proc.pid, proc.start_time), now)

    def _family(self) -> dict[int, Proc]:
        """A fresh walk, never the table's snapshot: what this finds gets signalled."""
        family = _family(self._leader, self._known, self._marker, self._table.markers)
        self._remember(family)
        return family

    async def _terminate(self) -> None:
        """SIGTERM the family, allow kill_grace_seconds, then SIGKILL whatever is left
        (in `finally`: a second cancellation during the grace still kills)."""
        family = self._family()
        if not family:
            return
        try:
            _signal_family(family, self._leader[0], signal.SIGTERM)
            _signal_family(family, self._leader[0], signal.SIGCONT)  # stopped ones must see it
            deadline = self._loop.time() + self._limits.kill_grace_seconds
            while any(alive(p.pid, p.start_time) for p in family.values()):
                if self._loop.time() >= deadline:
                    break
                await asyncio.sleep(_POLL)
        finally:
            _kill_hard(self._leader, self._known, self._marker, self._table.markers)

    async def _drain(self, pumps: list[asyncio.Task[None]], within: float) -> bool:
        """Wait up to `within` seconds for both pipes to reach EOF; re-raise a pump's failure."""
        pending = [p for p in pumps if not p.done()]
        if pending:
            await asyncio.wait(pending, timeout=within)
        for pump in pumps:
            if pump.done():
                pump.result()
        return all(p.done() for p in pumps)

    async def _close_pipes(self, pumps: list[asyncio.Task[None]]) -> None:
        if await self._drain(pumps, _GONE_TIMEOUT):
            return
        # the family is dead yet a pipe is open: an escaper we never saw still holds it
        _signal_family(_pipe_holders(self._inodes), 0, signal.SIGKILL)
        await self._drain(pumps, _GONE_TIMEOUT)

    async def _cleanup(
        self, tasks: list[asyncio.Task[Any]], transports: list[asyncio.ReadTransport]
    ) -> None:
        try:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for transport in transports:
                transport.close()
        finally:
            await self._table.leave(self)  # the family is dead or signalled: no more polling
        if self._pidfile is None:
            return
        deadline = self._loop.time() + _GONE_TIMEOUT
        while self._family():  # SIGKILLed processes take a moment to leave /proc
            if self._loop.time() >= deadline:
                return  # keep the pidfile: reap_leftovers will try again
            await asyncio.sleep(_POLL)
        self._pidfile.unlink(missing_ok=True)

    def _outcome(self, verdict: _Verdict | None, code: int | None) -> ProcessOutcome:
        if verdict is None and self._capped.is_set():
            verdict = ("failed", "output cap exceeded")
        if verdict is not None:
            outcome, reason = verdict
        elif code == 0:
            outcome, reason = "succeeded", None
        else:
            outcome, reason = "failed", _exit_reason(code, self._last_stderr)
        return ProcessOutcome(
            outcome=outcome,
            exit_code=code,
            reason=reason,
            output_bytes=self._output_bytes,
            pid=self._leader[0],
        )


async def run_agent(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    on_line: OnLine,
    limits: Limits,
    cancel: asyncio.Event,
    pidfile_dir: Path | None = None,
    run_key: str = "",
    table: ProcTable | None = None,
) -> ProcessOutcome:
    """Run `argv` in `cwd` with exactly `env` (plus the family marker), feed every output
    line to `on_line`, and return how it ended. Cancelling the calling task kills the
    family (SIGTERM, grace, SIGKILL) and re-raises. No process of the run survives it.
    `table` polls the family; by default the one every run on this loop shares."""
    if cancel.is_set():
        return ProcessOutcome(
            outcome="canceled",
            exit_code=None,
            reason="canceled before start",
            output_bytes=0,
            pid=0,
        )
    pidfile = _pidfile(pidfile_dir, run_key or uuid.uuid4().hex) if pidfile_dir else None
    if table is None:
        table = shared_table()
    return await _AgentRun(argv, cwd, env, on_line, limits, cancel, pidfile, table).run()
