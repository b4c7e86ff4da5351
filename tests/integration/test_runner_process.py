"""The executor-runner's process layer against real subprocesses: outcomes, timeouts,
limits, and that no process of a run survives it (checked in /proc)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.executor_runner.agent_env import build_agent_env
from services.executor_runner.executors import (
    AgentResult,
    build_argv,
    builtin_executors,
    merge_result,
    parse_line,
)
from services.executor_runner.process import (
    MARKER_VAR,
    Limits,
    ProcessOutcome,
    kill_recorded,
    reap_leftovers,
    run_agent,
)

PY = sys.executable
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
FAST = Limits(kill_grace_seconds=0.5)
REPO = Path(__file__).resolve().parents[2]


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def stat_fields(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data.rsplit(")", 1)[1].split()  # [0] is field 3 (state)


def is_gone(pid: int) -> bool:
    """No such process, or a zombie (dead, only waiting for init to reap it)."""
    fields = stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


async def wait_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not is_gone(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


class Lines:
    """An on_line callback that records lines and lets a test wait for one."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    async def __call__(self, stream: str, text: str) -> None:
        self.items.append((stream, text))
        self._changed.set()

    def of(self, stream: str) -> list[str]:
        return [text for s, text in self.items if s == stream]

    async def wait_for(self, match: Callable[[str], bool], within: float = 10.0) -> str:
        async with asyncio.timeout(within):
            while True:
                for _, text in self.items:
                    if match(text):
                        return text
                self._changed.clear()
                await self._changed.wait()


async def run(
    argv: list[str], lines: Lines | None = None, limits: Limits = FAST, **kw: object
) -> ProcessOutcome:
    cancel = kw.pop("cancel", None) or asyncio.Event()
    assert isinstance(cancel, asyncio.Event)
    cwd = kw.pop("cwd", Path("/tmp"))
    assert isinstance(cwd, Path)
    env = kw.pop("env", ENV)
    assert isinstance(env, dict)
    async with asyncio.timeout(30):
        return await run_agent(argv, cwd, env, lines or Lines(), limits, cancel, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------- normal runs


async def test_lines_from_both_streams_arrive_in_order() -> None:
    lines = Lines()
    outcome = await run(
        py("""
        import sys
        for i in range(50):
            print(f"out-{i}", flush=True)
            print(f"err-{i}", file=sys.stderr, flush=True)
        """),
        lines,
    )
    assert outcome.outcome == "succeeded"
    assert outcome.exit_code == 0
    assert outcome.reason is None
    assert lines.of("stdout") == [f"out-{i}" for i in range(50)]
    assert lines.of("stderr") == [f"err-{i}" for i in range(50)]
    assert outcome.output_bytes == sum(len(f"out-{i}\nerr-{i}\n") for i in range(50))
    assert outcome.pid > 0
    assert is_gone(outcome.pid)


async def test_nonzero_exit_fails_with_code_and_last_stderr_line() -> None:
    outcome = await run(py("import sys; print('boom', file=sys.stderr); sys.exit(7)"))
    assert (outcome.outcome, outcome.exit_code) == ("failed", 7)
    assert outcome.reason == "exit code 7: boom"


async def test_death_by_signal_is_reported_by_name() -> None:
    outcome = await run(py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert (outcome.outcome, outcome.exit_code) == ("failed", -9)
    assert outcome.reason is not None
    assert outcome.reason.startswith("killed by SIGKILL")


async def test_missing_executable_fails_without_raising() -> None:
    outcome = await run(["/nonexistent/agent-cli"])
    assert outcome.outcome == "failed"
    assert outcome.pid == 0
    assert outcome.reason is not None
    assert outcome.reason.startswith("could not start agent")


async def test_a_huge_line_is_split_not_fatal() -> None:
    lines = Lines()
    outcome = await run(
        py("import sys; sys.stdout.write('x' * 3_000_000 + '\\nend\\n')"),
        lines,
        Limits(max_line_bytes=1024 * 1024),
    )
    assert outcome.outcome == "succeeded"
    *pieces, last = lines.of("stdout")
    assert last == "end"
    assert len(pieces) == 3
    assert max(len(p) for p in pieces) <= 1024 * 1024
    assert "".join(pieces) == "x" * 3_000_000


async def test_split_never_cuts_a_utf8_character() -> None:
    lines = Lines()
    text = "é" * 5000 + "😀" * 700
    await run(py(f"print({text!r})"), lines, Limits(max_line_bytes=1001))
    pieces = lines.of("stdout")
    assert len(pieces) > 10
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


async def test_environment_is_the_given_one_plus_the_family_marker(tmp_path: Path) -> None:
    parent = {**os.environ, "ZLOTH_CANARY_SECRET": "s3cret", "GITHUB_TOKEN": "ghp_canary"}
    env = build_agent_env(builtin_executors()["demo-a"], tmp_path / "home", parent)
    lines = Lines()
    await run(py("import json, os; print(json.dumps(dict(os.environ)))"), lines, env=env)
    seen = json.loads(lines.of("stdout")[0])
    assert "ZLOTH_CANARY_SECRET" not in seen
    assert "GITHUB_TOKEN" not in seen
    assert "s3cret" not in lines.items[0][1]
    assert "ghp_canary" not in lines.items[0][1]
    assert seen["HOME"] == str(tmp_path / "home")
    assert MARKER_VAR in seen


# ------------------------------------------------------------ timeouts and cancel


async def test_wall_clock_timeout() -> None:
    started = time.monotonic()
    outcome = await run(
        py("""
        import time
        while True:
            print("tick", flush=True)
            time.sleep(0.05)
        """),
        limits=Limits(wall_seconds=1, kill_grace_seconds=0.5),
    )
    elapsed = time.monotonic() - started
    assert (outcome.outcome, outcome.reason) == ("timed_out", "wall-clock timeout after 1s")
    assert 1 <= elapsed < 1 + 0.5 + 1.5
    assert is_gone(outcome.pid)


async def test_idle_timeout() -> None:
    started = time.monotonic()
    outcome = await run(
        py("import time; print('hello', flush=True); time.sleep(60)"),
        limits=Limits(idle_seconds=0.5, kill_grace_seconds=0.5),
    )
    elapsed = time.monotonic() - started
    assert (outcome.outcome, outcome.reason) == ("timed_out", "no output for 0.5s")
    assert 0.5 <= elapsed < 0.5 + 0.5 + 1.5


AGENT_WITH_STUBBORN_CHILD = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


async def test_cancel_escalates_to_sigkill_for_the_whole_group() -> None:
    """Agent and child ignore SIGTERM: after the grace both die by SIGKILL."""
    lines, cancel = Lines(), asyncio.Event()
    task = asyncio.create_task(run(py(AGENT_WITH_STUBBORN_CHILD), lines, cancel=cancel))
    child = int(await lines.wait_for(str.isdigit))
    started = time.monotonic()
    cancel.set()
    outcome = await task
    assert (outcome.outcome, outcome.reason) == ("canceled", "canceled")
    assert outcome.exit_code == -signal.SIGKILL
    assert time.monotonic() - started >= FAST.kill_grace_seconds
    assert await wait_gone(child)
    assert is_gone(outcome.pid)


async def test_task_cancellation_kills_the_group_and_reraises() -> None:
    lines = Lines()
    task = asyncio.create_task(run(py(AGENT_WITH_STUBBORN_CHILD), lines))
    child = int(await lines.wait_for(str.isdigit))
    agent = next(int(name) for name in os.listdir("/proc") if _is_parent_of(name, child))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert is_gone(agent)
    assert await wait_gone(child)


def _is_parent_of(name: str, child: int) -> bool:
    fields = stat_fields(child)
    return name.isdigit() and fields is not None and fields[1] == name


async def test_cancel_before_start_spawns_nothing() -> None:
    cancel = asyncio.Event()
    cancel.set()
    outcome = await run(["/bin/false"], cancel=cancel)
    assert outcome.outcome == "canceled"
    assert outcome.pid == 0


async def test_failing_on_line_kills_the_agent_and_propagates() -> None:
    async def on_line(stream: str, text: str) -> None:
        raise RuntimeError("publish failed")

    cancel = asyncio.Event()
    with pytest.raises(RuntimeError, match="publish failed"):
        async with asyncio.timeout(10):
            await run_agent(py(AGENT_WITH_STUBBORN_CHILD), Path("/tmp"), ENV, on_line, FAST, cancel)


# ------------------------------------------------------------------- no orphans


async def test_setsid_grandchild_of_the_demo_agent_is_killed_on_cancel(tmp_path: Path) -> None:
    spec = builtin_executors()["demo-a"]
    argv = build_argv(spec, "FORKBOMB-ORPHAN SLEEP=30", tmp_path, tmp_path / "s.txt", None)
    lines, cancel = Lines(), asyncio.Event()
    task = asyncio.create_task(run(argv, lines, cwd=tmp_path, cancel=cancel))
    orphan = json.loads(await lines.wait_for(lambda t: '"pid"' in t))["pid"]
    fields = stat_fields(orphan)
    assert fields is not None
    assert fields[3] == str(orphan)
    cancel.set()
    outcome = await task
    assert outcome.outcome == "canceled"
    assert await wait_gone(orphan)


DOUBLE_FORK = """
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    if os.fork() == 0:
        os.setsid()
        os.write(w, str(os.getpid()).encode())
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2, w):
            os.dup2(null, fd)
        {grandchild}
    os._exit(0)
os.close(w)
print(os.read(r, 32).decode(), flush=True)
os.wait()
time.sleep({linger})
"""


async def test_daemon_left_behind_by_an_agent_that_exits_is_killed() -> None:
    """The agent exits at once: the escaper is found by the environment marker."""
    lines = Lines()
    code = DOUBLE_FORK.format(grandchild="time.sleep(600)", linger=0)
    outcome = await run(py(code), lines, Limits(kill_grace_seconds=0.5, tree_poll_seconds=60))
    assert outcome.outcome == "succeeded"
    assert await wait_gone(int(lines.of("stdout")[0]))


async def test_daemon_with_a_scrubbed_environment_is_found_by_the_tree_poll() -> None:
    """The escaper execs with an empty environment (no marker): the periodic tree poll,
    which saw it while the agent (its subreaper) lived, still finds it."""
    lines = Lines()
    code = DOUBLE_FORK.format(
        grandchild="os.execve('/bin/sleep', ['sleep', '600'], {})", linger=0.6
    )
    outcome = await run(py(code), lines, Limits(kill_grace_seconds=0.5, tree_poll_seconds=0.1))
    assert outcome.outcome == "succeeded"
    assert await wait_gone(int(lines.of("stdout")[0]))


async def test_background_child_holding_the_pipes_is_killed_after_exit() -> None:
    lines = Lines()
    started = time.monotonic()
    outcome = await run(["/bin/sh", "-c", "sleep 600 & echo $!"], lines)
    assert outcome.outcome == "succeeded"
    assert time.monotonic() - started < 5
    assert await wait_gone(int(lines.of("stdout")[0]))


# ------------------------------------------------------------------------ limits


async def test_memory_limit_makes_a_big_allocation_fail() -> None:
    outcome = await run(py("bytearray(10**9)"), limits=Limits(memory_bytes=256 * 1024 * 1024))
    assert (outcome.outcome, outcome.exit_code) == ("failed", 1)
    assert outcome.reason is not None
    assert "MemoryError" in outcome.reason


async def test_open_files_limit() -> None:
    code = "fs = [open('/dev/null') for _ in range(100)]"
    outcome = await run(py(code), limits=Limits(open_files=20))
    assert outcome.outcome == "failed"
    assert "Too many open files" in (outcome.reason or "")


async def test_file_size_limit_kills_the_writer(tmp_path: Path) -> None:
    """SIGXFSZ kills a writer by default; Python ignores it and gets EFBIG instead."""
    big = str(tmp_path / "big")
    outcome = await run(
        ["/bin/sh", "-c", f"exec yes > {big}"], limits=Limits(file_size_bytes=10_000)
    )
    assert (outcome.outcome, outcome.exit_code) == ("failed", -signal.SIGXFSZ)
    assert os.path.getsize(big) == 10_000
    outcome = await run(
        py(f"open({big!r}, 'wb').write(b'x' * 100_000)"), limits=Limits(file_size_bytes=10_000)
    )
    assert outcome.exit_code == 1
    assert "File too large" in (outcome.reason or "")


async def test_cpu_limit_stops_a_busy_loop() -> None:
    outcome = await run(py("while True: pass"), limits=Limits(cpu_seconds=1))
    assert outcome.outcome == "failed"
    assert outcome.exit_code == -signal.SIGXCPU


async def test_output_cap_fails_the_run() -> None:
    lines = Lines()
    code = """
    import time
    for i in range(200):
        print(str(i).rjust(999, "x"), flush=True)
    time.sleep(60)
    """
    outcome = await run(py(code), lines, Limits(max_output_bytes=50_000, kill_grace_seconds=0.5))
    assert (outcome.outcome, outcome.reason) == ("failed", "output cap exceeded")
    assert sum(len(text) + 1 for _, text in lines.items) <= 50_000
    assert outcome.output_bytes > 50_000


# ---------------------------------------------------------------------- pidfiles


async def test_pidfile_is_written_during_the_run_and_removed_after(tmp_path: Path) -> None:
    lines = Lines()
    task = asyncio.create_task(
        run(
            py("import time; print('up', flush=True); time.sleep(0.3)"),
            lines,
            pidfile_dir=tmp_path,
            run_key="run_1:attempt:1",
        )
    )
    await lines.wait_for(lambda t: t == "up")
    record = json.loads((tmp_path / "run_1:attempt:1.json").read_text())
    fields = stat_fields(record["pid"])
    assert fields is not None
    assert record["pgid"] == record["pid"]
    assert record["start_time"] == int(fields[19])  # /proc/<pid>/stat field 22
    outcome = await task
    assert outcome.pid == record["pid"]
    assert list(tmp_path.iterdir()) == []


async def test_kill_recorded_kills_a_running_attempt(tmp_path: Path) -> None:
    lines = Lines()
    task = asyncio.create_task(
        run(py(AGENT_WITH_STUBBORN_CHILD), lines, pidfile_dir=tmp_path, run_key="r:1")
    )
    child = int(await lines.wait_for(str.isdigit))
    killed = kill_recorded(tmp_path, "r:1")
    assert child in killed
    assert len(killed) == 2
    outcome = await task
    assert (outcome.outcome, outcome.exit_code) == ("failed", -signal.SIGKILL)
    assert is_gone(child)
    assert list(tmp_path.iterdir()) == []
    assert kill_recorded(tmp_path, "r:1") == []


RUNNER = """
import asyncio, sys
from pathlib import Path
from services.executor_runner.process import Limits, run_agent
async def on_line(stream, text):
    print(text, flush=True)
agent = ["{py}", "-c", "import subprocess, time; c = subprocess.Popen(['sleep', '600']); "
         "print(c.pid, flush=True); time.sleep(600)"]
asyncio.run(run_agent(agent, Path("/tmp"), {{"PATH": "/usr/bin:/bin"}}, on_line, Limits(),
                      asyncio.Event(), pidfile_dir=Path(sys.argv[1]), run_key="r1"))
"""


async def test_reap_leftovers_after_the_runner_was_killed(tmp_path: Path) -> None:
    """kill -9 of a runner: PDEATHSIG takes the agent, its child lives on in the agent's
    group until the next runner's reap_leftovers kills it."""
    runner = await asyncio.create_subprocess_exec(
        PY, "-c", RUNNER.format(py=PY), str(tmp_path), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    assert runner.stdout is not None
    async with asyncio.timeout(10):
        child = int(await runner.stdout.readline())
    agent = json.loads((tmp_path / "r1.json").read_text())["pid"]
    runner.kill()
    await runner.wait()
    assert await wait_gone(agent)  # PR_SET_PDEATHSIG
    fields = stat_fields(child)
    assert fields is not None
    assert fields[2] == str(agent)
    assert reap_leftovers(tmp_path) == [child]
    assert await wait_gone(child)
    assert list(tmp_path.iterdir()) == []


def write_pidfile(path: Path, pid: int, start_delta: int = 0, **extra: int) -> None:
    fields = stat_fields(pid)
    assert fields is not None
    record = {"pid": pid, "pgid": pid, "start_time": int(fields[19]) + start_delta, **extra}
    path.write_text(json.dumps(record))


async def spawn_session(*argv: str) -> asyncio.subprocess.Process:
    """A process in its own session, as an agent of a dead runner would be."""
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )


async def stop(*procs: asyncio.subprocess.Process) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_reap_leftovers_kills_a_live_group_and_spares_a_reused_pid(tmp_path: Path) -> None:
    code = (
        "import subprocess, time; c = subprocess.Popen(['sleep', '600']); print(c.pid, flush=True)"
    )
    leader = await spawn_session(*py(code + "; time.sleep(600)"))
    unrelated = await spawn_session("sleep", "600")
    try:
        assert leader.stdout is not None
        async with asyncio.timeout(10):
            child = int(await leader.stdout.readline())
        write_pidfile(tmp_path / "a.json", leader.pid)
        write_pidfile(tmp_path / "b.json", unrelated.pid, start_delta=1)  # not the same process
        assert reap_leftovers(tmp_path) == sorted([leader.pid, child])
        async with asyncio.timeout(5):
            assert await leader.wait() == -signal.SIGKILL
        assert await wait_gone(child)
        assert unrelated.returncode is None
        assert not is_gone(unrelated.pid)
        assert list(tmp_path.iterdir()) == []
    finally:
        await stop(leader, unrelated)


async def test_reap_leftovers_leaves_a_live_runners_pidfiles_alone(tmp_path: Path) -> None:
    agent = await spawn_session("sleep", "600")
    try:
        me = stat_fields(os.getpid())
        assert me is not None
        owner = {"owner_pid": os.getpid(), "owner_start_time": int(me[19])}
        write_pidfile(tmp_path / "x.json", agent.pid, **owner)
        assert reap_leftovers(tmp_path) == []
        assert not is_gone(agent.pid)
        assert (tmp_path / "x.json").exists()
    finally:
        await stop(agent)


# -------------------------------------------------------------------- demo agents


async def test_three_demo_agents_run_in_parallel(tmp_path: Path) -> None:
    executors = builtin_executors()
    first_event: dict[str, float] = {}
    finished: dict[str, float] = {}

    async def one(name: str) -> tuple[ProcessOutcome, AgentResult | None, Path]:
        spec, work = executors[name], tmp_path / name
        work.mkdir()
        (work / "README.md").write_text("# project\n")
        argv = build_argv(spec, "Add a greeting", work, work / "summary.txt", None)
        result: AgentResult | None = None

        async def on_line(stream: str, text: str) -> None:
            nonlocal result
            kind, _, extracted = (
                parse_line(spec, text) if stream == "stdout" else ("stderr", "", None)
            )
            first_event.setdefault(name, time.monotonic()) if kind == "event" else None
            result = merge_result(result, extracted) if extracted else result

        env = build_agent_env(spec, tmp_path / f"home-{name}", os.environ)
        outcome = await run_agent(argv, work, env, on_line, FAST, asyncio.Event())
        finished[name] = time.monotonic()
        return outcome, result, work

    async with asyncio.timeout(20):
        runs = await asyncio.gather(*(one(n) for n in ("demo-a", "demo-b", "demo-c")))
    assert max(first_event.values()) < min(finished.values())  # they overlapped
    for (outcome, result, work), style in zip(runs, "abc", strict=True):
        assert outcome.outcome == "succeeded", outcome
        assert result is not None
        assert result.session_id
        assert result.session_id.startswith(f"demo-{style}-")
        assert result.usage["input_tokens"] > 0
        assert result.summary
        assert (work / "summary.txt").read_text().strip() == result.summary
    assert (tmp_path / "demo-a" / "NOTES.md").read_text() == "- Add a greeting\n"
    assert (tmp_path / "demo-b" / "docs" / "add-a-greeting.md").exists()
    assert "## Add a greeting" in (tmp_path / "demo-c" / "README.md").read_text()


async def test_demo_agent_failure_and_resume(tmp_path: Path) -> None:
    spec = builtin_executors()["demo-b"]
    failed = await run(
        build_argv(spec, "please FAIL", tmp_path, tmp_path / "s", None), cwd=tmp_path
    )
    assert failed.reason == "exit code 3: demo agent failed on purpose"
    lines = Lines()
    argv = build_argv(spec, "more docs", tmp_path, tmp_path / "s", "demo-b-1234")
    resumed = await run(argv, lines, cwd=tmp_path)
    assert resumed.outcome == "succeeded"
    assert json.loads(lines.of("stdout")[-1])["session_id"] == "demo-b-1234"
    assert "resuming demo-b-1234" in lines.of("stdout")[0]
