"""The process table every supervised run on a loop shares, against real processes: one
walk of /proc per tick however many runs, environments read once per process, and the
tree poll still finds (only) each run's own escapers."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

from services.executor_runner import proctable
from services.executor_runner.process import Limits, ProcessOutcome, run_agent
from services.executor_runner.proctable import ProcTable, Snapshot, shared_table

PY = sys.executable
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def test_exported_names() -> None:
    assert set(proctable.__all__) == {
        "MARKER_VAR", "MarkerCache", "Observer", "Proc", "ProcTable", "Snapshot", "alive",
        "read_stat", "scan", "shared_table",
    }  # fmt: skip


class Ticks:
    """An observer of its own on the table: lets a test wait for the table's next walks."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.seen: list[Snapshot] = []
        self._changed = asyncio.Event()

    def observe(self, snapshot: Snapshot) -> None:
        self.seen.append(snapshot)
        self._changed.set()

    async def wait(self, more: int, within: float = 20.0) -> None:
        target = len(self.seen) + more
        async with asyncio.timeout(within):
            while len(self.seen) < target:
                self._changed.clear()
                await self._changed.wait()


class Printed:
    """on_line: collects stdout lines and wakes a waiter."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    async def __call__(self, stream: str, text: str) -> None:
        if stream == "stdout":
            self.lines.append(text)
            self._changed.set()

    async def wait_count(self, n: int, within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while len(self.lines) < n:
                self._changed.clear()
                await self._changed.wait()


def read_syscalls() -> int:
    """read() calls made so far by this process, all threads (the kernel counts them)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError("no syscr in /proc/self/io")


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


async def wait_gone(pid: int, within: float = 5.0) -> bool:
    try:
        async with asyncio.timeout(within):
            while not is_gone(pid):
                await asyncio.sleep(0.02)
    except TimeoutError:
        return False
    return True


async def test_one_proc_walk_per_tick_however_many_runs() -> None:
    """40 idle runs on the loop's shared table: each tick is one walk (the table's scan
    counter against an observer's tick count), costs about one read() per process on the
    host, not one per process per run, and reads no environment twice."""
    runs, limits = 40, Limits(tree_poll_seconds=0.05, kill_grace_seconds=0.5)
    table, ticks = shared_table(), Ticks(limits.tree_poll_seconds)
    printed, cancel = Printed(), asyncio.Event()
    agents = [
        asyncio.create_task(
            run_agent(["sh", "-c", "echo up; exec sleep 600"], Path("/tmp"), ENV, printed,
                      limits, cancel)
        )
        for _ in range(runs)
    ]
    table.join(ticks)
    try:
        await printed.wait_count(runs)
        await ticks.wait(3)  # every run has joined and the environments have been read once
        host = len(ticks.seen[-1].procs)
        scans, reads, syscalls, seen = (
            table.scans, table.markers.reads, read_syscalls(), len(ticks.seen)
        )
        await ticks.wait(10)
        walks = table.scans - scans
        assert walks == len(ticks.seen) - seen  # one walk per tick, for 41 observers
        # per tick: ~one read() per process (its stat); per-run walks would make it 40x
        assert (read_syscalls() - syscalls) / walks < 3 * host
        # environments: only processes new since the last tick (none of ours are); read on
        # every tick it would be 10x the host's processes
        assert table.markers.reads - reads < 3 * host
    finally:
        await table.leave(ticks)
        cancel.set()
        outcomes: list[ProcessOutcome] = await asyncio.wait_for(asyncio.gather(*agents), 30)
    assert {o.outcome for o in outcomes} == {"canceled"}
    assert all(is_gone(o.pid) for o in outcomes)


ESCAPER = """
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    if os.fork() == 0:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.write(w, str(os.getpid()).encode())
        os.close(w)
        os.execve("/bin/sleep", ["sleep", "600"], {{}})  # no marker: only the tree poll knows it
    os._exit(0)
os.close(w)
print(os.read(r, 32).decode(), flush=True)
os.wait()
while not os.path.exists({go!r}):
    time.sleep(0.02)
"""


async def test_escapers_of_runs_sharing_a_table_are_killed_with_their_own_run(
    tmp_path: Path,
) -> None:
    """Ten runs share one table; each agent leaves a double-forked daemon with a scrubbed
    environment on its own pipes' /dev/null, found only by the tree poll. When the first
    five end, their daemons die and the other five's live on; then those die too."""
    table, ticks = ProcTable(), Ticks(0.05)
    limits = Limits(tree_poll_seconds=0.05, kill_grace_seconds=0.5)
    go = {"early": tmp_path / "go-early", "late": tmp_path / "go-late"}
    printed = {group: [Printed() for _ in range(5)] for group in go}
    tasks = {
        group: [
            asyncio.create_task(
                run_agent([PY, "-c", textwrap.dedent(ESCAPER.format(go=str(go[group])))],
                          tmp_path, ENV, p, limits, asyncio.Event(), table=table)
            )
            for p in printed[group]
        ]
        for group in go
    }
    table.join(ticks)
    try:
        for p in (*printed["early"], *printed["late"]):
            await p.wait_count(1)
        daemons = {group: [int(p.lines[0]) for p in printed[group]] for group in go}
        await ticks.wait(2)  # walked /proc since every daemon exists, its agent still alive
        go["early"].touch()
        early = await asyncio.wait_for(asyncio.gather(*tasks["early"]), 30)
        assert {o.outcome for o in early} == {"succeeded"}
        for pid in daemons["early"]:
            assert await wait_gone(pid)
        assert not any(is_gone(pid) for pid in daemons["late"])  # not another run's to kill
        go["late"].touch()
        late = await asyncio.wait_for(asyncio.gather(*tasks["late"]), 30)
        assert {o.outcome for o in late} == {"succeeded"}
        for pid in daemons["late"]:
            assert await wait_gone(pid)
    finally:
        await table.leave(ticks)
        for group in go:
            go[group].touch()
        await asyncio.gather(*tasks["early"], *tasks["late"], return_exceptions=True)


async def test_the_refresher_runs_only_while_runs_observe() -> None:
    """The first observer starts the walks, the last one leaving stops them."""
    table, ticks = ProcTable(), Ticks(0.02)
    table.join(ticks)
    await ticks.wait(2)
    await table.leave(ticks)
    stopped = table.scans
    await asyncio.sleep(0.2)  # ten intervals: a refresher still running would walk meanwhile
    assert table.scans == stopped
    other = Ticks(0.02)
    table.join(other)
    await other.wait(1)
    await table.leave(other)
    assert table.scans == stopped + len(other.seen)
    assert all(os.getpid() in s.procs for s in ticks.seen)
