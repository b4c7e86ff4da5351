"""What /proc says about processes, and one process table per event loop that every
supervised agent run on the loop shares: one full /proc walk per tick for all of them.

Why a refresher task that *pushes* each snapshot to its runs, rather than a cached
snapshot with a timestamp that runs pull: a pulled cache refreshed at most once per
interval hands a run a snapshot up to one interval old when it asks, so the gap between
two snapshots a run looks at grows to nearly two intervals, and runs with different
intervals would skip snapshots. Pushed, every run sees every snapshot, the walk happens
at most once per (shortest requested) interval, one task and one thread hop per tick
instead of one per run, and the family walk per run costs O(its family), not
O(processes) (the snapshot indexes children, groups, sessions and markers once).

A run learns from the shared snapshot only which processes belong to its family (and
forgets those gone for good). Whatever signals uses `Snapshot.take()`, a fresh walk,
never the shared snapshot: a stale table must not miss a process nor name a reused pid.

The environment marker is read once per process identity (pid, start time), not per
tick and run: `MarkerCache`. A process of a family has the marker from its fork on
(fork copies the parent's environment; an exec that drops it is a deliberate scrub,
which the tree poll covers), so the first read decides. (The agent itself, read between
the runner's vfork and its exec, shows the runner's environment: it is found by its pid.)
An empty read is not cached (mid-exec, a process shows an empty environment); an
unreadable one is (EACCES, or ESRCH for a process without memory: kernel threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from services.core.telemetry import get_logger

__all__ = [
    "MARKER_VAR",
    "MarkerCache",
    "Observer",
    "Proc",
    "ProcTable",
    "Snapshot",
    "alive",
    "read_stat",
    "scan",
    "shared_table",
]

MARKER_VAR = "AGENT_RUN_TOKEN"  # not ZLOTH_*: nothing of zloth's namespace reaches an agent
_MARKER_PREFIX = f"{MARKER_VAR}=".encode()
_STAT_SIZE = 4096  # one read returns the whole stat line (well under 1 KiB)
_ENVIRON_CHUNK = 256 * 1024

log = get_logger(service="executor-runner")


class Proc(NamedTuple):
    pid: int
    ppid: int
    pgid: int
    sid: int
    start_time: int
    state: str


def _read(path: str, size: int) -> bytes:
    """os.open/os.read: a third cheaper than open() per file, and /proc walks are hot."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _read_all(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, _ENVIRON_CHUNK)]
        while chunks[-1]:
            chunks.append(os.read(fd, _ENVIRON_CHUNK))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_stat(pid: int) -> Proc | None:
    try:
        data = _read(f"/proc/{pid}/stat", _STAT_SIZE)
        # comm (field 2) may contain spaces and ')': the fixed fields start after the last ')'
        rest = data[data.rindex(b")") + 2 :].split()
        return Proc(pid, int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19]), rest[0].decode())
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int, start_time: int) -> bool:
    st = read_stat(pid)
    return st is not None and st.start_time == start_time and st.state not in "ZX"


def scan() -> dict[int, Proc]:
    """Every live (non-zombie) process; zombies are dead and their children re-parented."""
    procs: dict[int, Proc] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit() and (st := read_stat(int(name))) and st.state not in "ZX":
                procs[st.pid] = st
    return procs


class MarkerCache:
    """The marker values in each process's environment, by (pid, start time). Shared by
    the refresher thread and the loop's kill path, hence the lock."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self.reads = 0  # /proc/<pid>/environ reads, for tests and benchmarks

    def markers(self, proc: Proc) -> tuple[str, ...]:
        key = (proc.pid, proc.start_time)
        with self._lock:
            found = self._seen.get(key)
        if found is not None:
            return found
        with self._lock:
            self.reads += 1
        try:
            data: bytes | None = _read_all(f"/proc/{proc.pid}/environ")
        except (PermissionError, ProcessLookupError):
            # another user's (or init's) process, or one without memory (a kernel thread,
            # an exiting process: ESRCH): never one of ours, and will not become one
            data = None
        except OSError:
            return ()  # gone
        if data == b"" and proc.pgid != 0:  # pgid 0: a kernel thread on an older kernel
            return ()  # mid-exec (or a truly empty environment): read again next time
        found = tuple(
            entry[len(_MARKER_PREFIX) :].decode(errors="replace")
            for entry in (data or b"").split(b"\0")
            if entry.startswith(_MARKER_PREFIX)
        )
        with self._lock:
            self._seen[key] = found
        return found

    def prune(self, procs: dict[int, Proc]) -> None:
        """Forget processes that are gone (their identity never comes back)."""
        with self._lock:
            self._seen = {
                key: value
                for key, value in self._seen.items()
                if (p := procs.get(key[0])) is not None and p.start_time == key[1]
            }


class Snapshot:
    """One walk of /proc, indexed for family lookups."""

    def __init__(self, procs: dict[int, Proc], markers: MarkerCache, taken_at: float) -> None:
        self.procs, self.taken_at = procs, taken_at
        self._me, self._own = os.getpid(), (os.getpgrp(), os.getsid(0))
        self._children: dict[int, list[int]] = defaultdict(list)
        self._members: dict[int, list[int]] = defaultdict(list)  # by group and by session
        self._holders: dict[str, list[int]] = defaultdict(list)  # by marker
        for proc in procs.values():
            self._children[proc.ppid].append(proc.pid)
            self._members[proc.pgid].append(proc.pid)
            if proc.sid != proc.pgid:
                self._members[proc.sid].append(proc.pid)
            for marker in markers.markers(proc):
                self._holders[marker].append(proc.pid)

    @classmethod
    def take(cls, markers: MarkerCache) -> Snapshot:
        """A fresh walk (reads environ only for processes the cache has not classified)."""
        taken_at = time.monotonic()
        return cls(scan(), markers, taken_at)

    def family(
        self, leader: tuple[int, int], known: Iterable[tuple[int, int]] = (), marker: str = ""
    ) -> dict[int, Proc]:
        """The live family of an agent that leads its own session (pgid == sid == pid): the
        leader (pid, start_time) and its descendants, members of its group or session,
        still-living `known` (pid, start_time) pairs, and holders of `marker`."""
        procs = self.procs
        pid, start = leader
        seeds = [p for p, s in (leader, *known) if p in procs and procs[p].start_time == s]
        # a live process with the leader's pid but another start time means the id was reused
        # (the kernel frees a group id only once the group is empty): then the group is not ours
        reused = pid in procs and procs[pid].start_time != start
        if pid > 1 and not reused and pid not in self._own:
            seeds += self._members.get(pid, ())
        if marker:
            seeds += self._holders.get(marker, ())
        found: dict[int, Proc] = {}
        while seeds:
            p = seeds.pop()
            if p in procs and p not in found:
                found[p] = procs[p]
                seeds.extend(self._children.get(p, ()))
        found.pop(self._me, None)  # a corrupt pidfile must never make us kill ourselves
        return found


class Observer(Protocol):
    """A supervised run: how often it wants the table, and what it does with a snapshot."""

    @property
    def interval(self) -> float: ...

    def observe(self, snapshot: Snapshot) -> None: ...


class ProcTable:
    """A periodic /proc walk shared by its observers: it runs while at least one observer
    has joined, every min(observer.interval) seconds, in a worker thread (a walk costs
    ~10 µs a process), and hands the same snapshot to each observer on the loop."""

    def __init__(self) -> None:
        self.markers = MarkerCache()
        self.scans = 0  # full /proc walks done by the refresher
        self._observers: dict[Observer, None] = {}  # ordered set
        self._task: asyncio.Task[None] | None = None
        # made with the refresher: an Event binds to its loop, and the table must not keep
        # a finished loop alive (shared_table() keys tables weakly by loop)
        self._wake: asyncio.Event | None = None

    def join(self, observer: Observer) -> None:
        """Observe from the next tick on (the first observer starts the refresher)."""
        self._observers[observer] = None
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            # an empty context: the refresher must not carry the first run's log bindings
            self._task = asyncio.create_task(
                self._refresh(self._wake), name="proc-table", context=contextvars.Context()
            )
        elif self._wake is not None:
            self._wake.set()  # a shorter interval takes effect now, not after the current one

    async def leave(self, observer: Observer) -> None:
        """Stop observing; the last observer to leave stops (and awaits) the refresher."""
        self._observers.pop(observer, None)
        if self._observers or self._task is None:
            return
        task, self._task, self._wake = self._task, None, None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _refresh(self, wake: asyncio.Event) -> None:
        last = time.monotonic()
        while self._observers:
            interval = min(o.interval for o in self._observers)
            delay = last + interval - time.monotonic()
            if delay > 0:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await wake.wait()
                continue  # observers or their intervals may have changed meanwhile
            last = time.monotonic()
            try:
                await self._tick()
            except Exception:  # top of a periodic unit: the next tick retries
                log.exception("proc_table_refresh_failed")

    async def _tick(self) -> None:
        snapshot = await asyncio.to_thread(self._take)
        self.scans += 1
        for observer in list(self._observers):
            observer.observe(snapshot)

    def _take(self) -> Snapshot:
        snapshot = Snapshot.take(self.markers)
        self.markers.prune(snapshot.procs)
        return snapshot


_TABLES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProcTable] = (
    weakref.WeakKeyDictionary()
)


def shared_table() -> ProcTable:
    """The running loop's table (one per loop, as asyncio keeps its own per-loop state;
    it holds no task while no run observes it)."""
    loop = asyncio.get_running_loop()
    table = _TABLES.get(loop)
    if table is None:
        table = _TABLES[loop] = ProcTable()
    return table
