"""Live-log latency (issue 6): an agent writing a line → an SSE client receiving it, at 1 and
at N (200) clients, and the log-relay's CPU per 1,000 lines/s. Prints JSON.

Starts its own nats-server and the log-relay as its own OS process (`zloth serve
log-relay`), so the relay's CPU is read from /proc/<pid>/stat apart from everything else.
Per scenario, a fresh run id: the SSE clients (in a second process, see NOTES) connect to
GET /v1/runs/{id}/logs/stream and attach to the relay's feed; then this process feeds a real
`LogBatcher` (publishing through `Bus`, as executor-runner does) `--rate` lines/s for
`--seconds`, each line carrying its write time, then publishes the final chunk as the
scheduler does. Before the scenarios, an idle baseline of the relay's CPU (no clients, no
traffic) over a window as long as a scenario's steady window.

    .venv/bin/python scripts/bench/logs.py --rate 1000 --seconds 10 --clients 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from schemas.logs import LogChunk  # noqa: E402
from services.core.bus import Bus  # noqa: E402
from services.core.entry import run_loop  # noqa: E402
from services.core.natsd import NatsServer  # noqa: E402
from services.core.telemetry import configure_logging  # noqa: E402
from services.executor_runner.logbatch import LogBatcher  # noqa: E402
from tests.support.procs import pids_with  # noqa: E402
from tests.support.stack import free_port  # noqa: E402

HOST = "127.0.0.1"
# A line's write time, CLOCK_REALTIME ns: the clock of the kernel's receive timestamps.
STAMP = re.compile(rb"wt=(\d+);")
LINE_BYTES = 120  # a typical agent output line
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST_BUSY = "whole_host"
HOST_STEAL = "host_steal"  # CPU time the hypervisor gave to other guests
HOST_PRESSURE = "host_cpu_pressure_some"  # share of the time some task waited for a CPU
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; = SCM_TIMESTAMPNS

NOTES = [
    "Latency (p50_ms..max_ms) = the kernel's receive timestamp (SO_TIMESTAMPNS) of the read "
    "that completed the SSE event at the client's socket, minus the time (time.time_ns) "
    "put in the line right before LogBatcher.add(); both CLOCK_REALTIME on one host. "
    "received_by_client_process is the same up to when the client process's read returned: "
    "it adds the client's own scheduling on this shared host (breakdown."
    "client_socket_to_client_read), which a browser elsewhere would not share with the "
    "relay. client_process.events_read_before_arrival (must be 0) checks the two stamps. "
    "Caveat: a client process stalled long enough to fill its socket's receive buffer "
    "holds back the relay's sends (TCP flow control), so such a stall still shows in "
    "arrival times; client_process.loop_lag_ms.max flags one.",
    "It INCLUDES the runner's batching: a chunk closes max_delay=100 ms after its first "
    "line (or at ~64 KiB, not reached at this rate), so a line waits 0-100 ms in the "
    "batcher, ~50 ms at the median (breakdown.write_to_publish). Then: JetStream publish "
    "(file store) → the relay's shared ordered-consumer feed → render once → each "
    "client's mailbox → its response task → uvicorn chunked write → loopback TCP. "
    "breakdown.publish_to_client_socket is that part alone (chunk publish start → arrival, "
    "per chunk per client): the relay's share, with NATS; ..._p50_ms_by_second is its "
    "median per second of the run (by publish time), to tell a steady cost from a stall.",
    "It EXCLUDES the agent process → runner pipe and the adapter's line parsing "
    "(executor_runner/process.py): the producer calls LogBatcher.add directly, with the "
    "same emit as executor-runner (bus.publish of each chunk).",
    "Clients run in a second process (non-blocking sockets, chunked decoding, a regex for "
    "the stamps), so parsing 200 clients' frames cannot delay the producer's batching "
    "timer or its publishes; each read is stamped before any parsing (deferred with "
    "call_soon). client_process.loop_lag_ms is that process's event-loop lag (a 5 ms "
    "ticker's overshoot).",
    "Samples: every line at every client, none sampled out (lines × clients).",
    "CPU: utime+stime of the process (all threads) from /proc/<pid>/stat (10 ms ticks) "
    "over the steady window: from `warmup` s after the first line to the last line "
    "written (the final chunk and the archiving it triggers fall outside; the next "
    "scenario starts once the archive is written). relay_cpu_per_1000_lines_per_s = "
    "CPU s/s ÷ (lines/s in the window ÷ 1000); *_net_of_idle subtracts the idle baseline "
    "(same window length, relay up, no clients, no traffic).",
    "The host is shared: cpu_seconds_per_second has every process of this benchmark, the "
    "whole host and everything else (other_processes) over the same window, the CPU the "
    "hypervisor stole (host_steal, /proc/stat), the share of the window in which some "
    "task waited for a CPU (host_cpu_pressure_some, /proc/pressure/cpu), and "
    "runqueue_wait_seconds_per_second how long each event-loop thread waited for a CPU "
    "(/proc/<pid>/schedstat). When the host is busy, latency (the tails above all) "
    "includes that wait: compare runs with it in view, not bare.",
    "relay_rss_mb_peak: VmHWM of the relay after resetting it (/proc/<pid>/clear_refs) "
    "once the scenario's clients were attached, read after they all got their end event.",
]


# -- /proc -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (every thread), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def host_seconds() -> dict[str, float]:
    """Whole-host CPU seconds (all CPUs): busy (idle, iowait and steal excluded), stolen by
    the hypervisor, and how long some task waited for a CPU (PSI, where the kernel has it)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    steal = ticks[7] / CLK_TCK
    found = {HOST_BUSY: (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / CLK_TCK,
             HOST_STEAL: steal}
    try:
        some = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
        found[HOST_PRESSURE] = int(some.rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        pass
    return found


def runqueue_wait_seconds(pid: int) -> float:
    """Time the process's main thread (the event loop) spent runnable but not running."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class CpuProbe:
    """CPU seconds of several processes between `start()` and `stop()`."""

    pids: dict[str, int]
    began: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    waits_began: dict[str, float] = field(default_factory=dict)
    waits_ended: dict[str, float] = field(default_factory=dict)
    t0: float = 0.0
    t1: float = 0.0

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.began = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.began.update(host_seconds())
        self.waits_began = self._waits()

    def stop(self) -> None:
        self.t1 = time.monotonic()
        self.ended = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.ended.update(host_seconds())
        self.waits_ended = self._waits()

    def _waits(self) -> dict[str, float]:
        return {name: runqueue_wait_seconds(pid) for name, pid in self.pids.items()
                if name != "nats_server"}  # a Go server: its main thread says little

    def waits(self) -> dict[str, float]:
        return {name: round((self.waits_ended[name] - self.waits_began[name]) / self.window, 3)
                for name in self.waits_began}

    def table(self) -> dict[str, float]:
        """CPU s/s of each process, of the whole host, and of everything else on it."""
        ours = {name: round(self.per_second(name), 3) for name in self.pids}
        host = round(self.per_second(HOST_BUSY), 3)
        table = {**ours, HOST_BUSY: host,
                 "other_processes": round(max(0.0, host - sum(ours.values())), 3),
                 HOST_STEAL: round(self.per_second(HOST_STEAL), 3)}
        if HOST_PRESSURE in self.began and HOST_PRESSURE in self.ended:
            table[HOST_PRESSURE] = round(self.per_second(HOST_PRESSURE), 3)
        return table

    @property
    def window(self) -> float:
        return self.t1 - self.t0

    def per_second(self, name: str) -> float:
        return (self.ended[name] - self.began[name]) / self.window


# -- statistics ------------------------------------------------------------------------------


def percentiles(samples_ns: Sequence[int]) -> dict[str, float]:
    if not samples_ns:
        return {"n": 0}
    ordered = sorted(samples_ns)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)

    return {
        "n": len(ordered),
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "mean_ms": round(statistics.fmean(ordered) / 1e6, 3),
        "max_ms": round(ordered[-1] / 1e6, 3),
    }


# -- the clients' process --------------------------------------------------------------------


class SseClient:
    """One GET of an SSE stream over a non-blocking socket: chunked transfer decoding, events
    split on blank lines. Every read is stamped twice: by the kernel when its last segment
    reached the socket (SO_TIMESTAMPNS) and by this process when the read returned; each
    `log` event's line stamps become two latencies against the read completing it."""

    def __init__(self, request: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self._request = request
        self._loop = loop
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setblocking(False)
        self._reading = False
        self._pieces: list[tuple[int, int, bytes]] = []
        self._scheduled = False
        self._raw = bytearray()
        self._body = bytearray()
        self._headers_done = False
        self._need = 0  # bytes of the current HTTP chunk still expected (+2 for its CRLF)
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.at_socket = array("q")  # per line: kernel arrival − write
        self.at_process = array("q")  # per line: this process's read − write
        self.frame_ids = array("q")
        self.frame_socket = array("q")
        self.frame_process = array("q")
        self.lines = 0
        self.unstamped_reads = 0
        self.ended = False  # got its end event
        self._closed = False
        self.comments: list[str] = []

    async def open(self, port: int) -> None:
        await self._loop.sock_connect(self._sock, (HOST, port))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await self._loop.sock_sendall(self._sock, self._request)
        self._loop.add_reader(self._sock.fileno(), self._readable)
        self._reading = True

    def _readable(self) -> None:
        try:
            data, ancillary, _, _ = self._sock.recvmsg(1 << 18, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary = b"", []
        read_at = time.time_ns()
        if not data:
            self._parse()
            self.close()
            for future in (self.opened, self.done):
                if not future.done():
                    future.set_result(None)
            return
        arrived = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                sec, nsec = struct.unpack("qq", payload[:16])
                arrived = sec * 1_000_000_000 + nsec
        if not arrived:
            self.unstamped_reads += 1
            arrived = read_at
        self._pieces.append((arrived, read_at, data))
        if not self._scheduled:  # parse after this loop pass's reads: stamps come first
            self._scheduled = True
            self._loop.call_soon(self._parse)

    def _parse(self) -> None:
        self._scheduled = False
        pieces, self._pieces = self._pieces, []
        for arrived, read_at, data in pieces:
            self._raw += data
            self._dechunk(arrived, read_at)

    def _dechunk(self, arrived: int, read_at: int) -> None:
        raw = self._raw
        if not self._headers_done:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(raw[:end]).lower()
            if not head.startswith(b"http/1.1 200") or b"chunked" not in head:
                raise RuntimeError(f"unexpected response: {head[:200]!r}")
            del raw[:end + 4]
            self._headers_done = True
            self.opened.set_result(None)
        while not self._closed:
            if self._need == 0:
                eol = raw.find(b"\r\n")
                if eol < 0:
                    return
                size = int(raw[:eol].split(b";")[0], 16)
                del raw[:eol + 2]
                if size == 0:  # the server ended the response: without an end event?
                    self._finish(ended=False)
                    return
                self._need = size + 2
            if len(raw) < self._need:
                return
            self._body += raw[:self._need - 2]
            del raw[:self._need]
            self._need = 0
            self._events(arrived, read_at)

    def _events(self, arrived: int, read_at: int) -> None:
        body = self._body
        while (end := body.find(b"\n\n")) >= 0:
            block = bytes(body[:end])
            del body[:end + 2]
            self._event(block, arrived, read_at)

    def _event(self, block: bytes, arrived: int, read_at: int) -> None:
        kind, event_id, data = b"message", -1, b""
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
            elif line.startswith(b"event: "):
                kind = line[7:]
            elif line.startswith(b"id: "):
                event_id = int(line[4:])
            elif line.startswith(b":"):
                self.comments.append(line[1:].strip().decode())
        if kind == b"log":
            stamps = [int(stamp) for stamp in STAMP.findall(data)]
            self.at_socket.extend([arrived - stamp for stamp in stamps])
            self.at_process.extend([read_at - stamp for stamp in stamps])
            self.lines += len(stamps)
            self.frame_ids.append(event_id)
            self.frame_socket.append(arrived)
            self.frame_process.append(read_at)
        elif kind == b"end":
            self._finish(ended=True)

    def _finish(self, ended: bool) -> None:
        self.ended = self.ended or ended
        self._closed = True
        if not self.done.done():
            self.done.set_result(None)
        self.close()

    def close(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False
        self._sock.close()


async def _loop_lag(stop: asyncio.Event, into: array[int], every: float = 0.005) -> None:
    while not stop.is_set():
        before = time.monotonic_ns()
        await asyncio.sleep(every)
        into.append(time.monotonic_ns() - before - int(every * 1e9))


SAMPLE_FILES = ("at_socket", "at_process", "frame_ids", "frame_socket", "frame_process")


async def clients_main(port: int, path: str, count: int, out: Path, timeout: float) -> None:
    """The second process: open `count` streams, say "ready", read until every client got
    its end event, write the samples to `out`.*, print a JSON summary."""
    loop = asyncio.get_running_loop()
    request = (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()
    clients = [SseClient(request, loop) for _ in range(count)]
    for client in clients:
        await client.open(port)
    async with asyncio.timeout(30):
        await asyncio.gather(*(c.opened for c in clients))
    print("ready", flush=True)
    lag = array("q")
    stop = asyncio.Event()
    ticker = asyncio.create_task(_loop_lag(stop, lag))
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(c.done for c in clients))
    except TimeoutError:
        pass
    stop.set()
    await ticker
    for client in clients:
        client.close()
    per_client_p50: list[int] = []
    per_client_p99: list[int] = []
    for name in SAMPLE_FILES:
        merged = array("q")
        for client in clients:
            merged.extend(getattr(client, name))
        out.with_suffix(f".{name}").write_bytes(merged.tobytes())
    for client in clients:
        if client.at_socket:
            own = sorted(client.at_socket)
            per_client_p50.append(own[len(own) // 2])
            per_client_p99.append(own[min(len(own) - 1, int(0.99 * len(own)))])
    lines = [c.lines for c in clients]
    summary = {
        "clients": count,
        "ended": sum(c.ended for c in clients),
        "lines_min": min(lines),
        "lines_max": max(lines),
        "unstamped_reads": sum(c.unstamped_reads for c in clients),
        "comments": sorted({text for c in clients for text in c.comments}),
        "per_client_p50_ms": _range_ms(per_client_p50),
        "per_client_p99_ms": _range_ms(per_client_p99),
        "loop_lag_ms": {k: v for k, v in percentiles(lag).items() if k != "mean_ms"},
    }
    print(json.dumps(summary), flush=True)


def _range_ms(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": round(min(values) / 1e6, 3), "max": round(max(values) / 1e6, 3)}


# -- the relay process -----------------------------------------------------------------------


def _open_log(path: Path) -> IO[bytes]:
    return path.open("ab")


class Relay:
    """`zloth serve log-relay` in its own process, on a free port."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.http = httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=10)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, nats_url: str, base: Path) -> Relay:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZLOTH_")}
        env.update(ZLOTH_NATS_URL=nats_url, ZLOTH_DATA_DIR=str(base / "relay"),
                   ZLOTH_LOG_RELAY_PORT=str(port), ZLOTH_LOG_LEVEL="warning",
                   ZLOTH_LOG_FORMAT="json")
        log_path = base / "relay.log"
        log = _open_log(log_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.cli.main", "serve", "log-relay",
                cwd=ROOT, env=env, stdout=log, stderr=log,
            )
        finally:
            log.close()
        relay = cls(proc, port, log_path)
        try:
            await relay._healthy()
        except BaseException:
            await relay.stop()
            raise
        return relay

    async def _healthy(self, within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"log-relay exited: {self.log_tail()}")
                try:
                    if (await self.http.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

    async def hub(self) -> dict[str, int]:
        health = (await self.http.get("/healthz")).json()
        return cast(dict[str, int], health["services"]["log-relay"]["hub"])

    async def until_attached(self, count: int, within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while True:
                if (await self.hub())["attached"] >= count:
                    return
                await asyncio.sleep(0.05)

    async def until_archived(self, run_id: str, within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while True:
                page = await self.http.get(f"/v1/runs/{run_id}/logs", params={"limit": "1"})
                if page.status_code == 200 and page.json()["source"] == "archive":
                    return
                await asyncio.sleep(0.1)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def stop(self) -> None:
        await self.http.aclose()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def problems(self) -> dict[str, Any]:
        """What the relay logged at warning or above (it logs JSON at level warning), and
        any other output (a traceback); with its exit code after SIGTERM."""
        found: list[str] = []
        for line in self.log_tail(1 << 20).splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                found.append(line[:300])
                continue
            if isinstance(record, dict) and record.get("level") in ("warning", "error",
                                                                    "critical"):
                found.append(json.dumps(record)[:300])
        return {"exit_code": self.proc.returncode, "log_lines_at_warning_or_above":
                len(found), "first": found[:5]}


# -- the producer ----------------------------------------------------------------------------


@dataclass
class Produced:
    lines: int = 0
    chunks: int = 0
    emitted_at: dict[int, int] = field(default_factory=dict)  # stream seq → publish start ns
    batching: array[int] = field(default_factory=lambda: array("q"))  # write → publish start
    publish_ack: array[int] = field(default_factory=lambda: array("q"))
    max_late_ns: int = 0  # the writer's worst lag behind its schedule
    window_lines: int = 0  # lines written inside the CPU window
    cpu: CpuProbe | None = None


async def produce(bus: Bus, run_id: str, rate: float, seconds: float, warmup: float,
                  probe: CpuProbe) -> Produced:
    """Feed a LogBatcher `rate` lines/s for `seconds`; `probe` spans the steady window."""
    out = Produced(cpu=probe)

    async def emit(chunk: LogChunk) -> None:  # what executor-runner's emit does, timed
        started, clock = time.time_ns(), time.monotonic_ns()
        seq = await bus.publish(chunk)
        out.publish_ack.append(time.monotonic_ns() - clock)
        out.emitted_at[seq] = started
        out.chunks += 1
        out.batching.extend([started - int(m) for line in chunk.lines
                             for m in STAMP.findall(line.text.encode())])

    total = int(rate * seconds)
    steady_from = int(rate * warmup)
    filler = "x" * LINE_BYTES
    async with LogBatcher(run_id, 1, 1, emit) as logs:
        t0 = time.monotonic_ns()
        for n in range(total):
            target = t0 + int(n * 1e9 / rate)
            delay = target - time.monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            if n == steady_from:
                probe.start()
            out.max_late_ns = max(out.max_late_ns, time.monotonic_ns() - target)
            head = f"wt={time.time_ns()};line={n:06d} "
            await logs.add("stdout", head + filler[:max(0, LINE_BYTES - len(head))])
            out.lines += 1
        probe.stop()
        out.window_lines = total - steady_from
    # The run's end, as the scheduler publishes it once the run is terminal.
    await bus.publish(LogChunk(run_id=run_id, attempt=1, seq=0, final=True, state="succeeded"))
    return out


# -- scenarios -------------------------------------------------------------------------------


@dataclass
class Context:
    bus: Bus
    relay: Relay
    base: Path
    nats_pid: int | None
    rate: float
    seconds: float
    warmup: float
    idle_cpu_per_s: float = 0.0


async def idle_baseline(ctx: Context) -> dict[str, Any]:
    probe = CpuProbe({"relay": ctx.relay.pid})
    probe.start()
    await asyncio.sleep(ctx.seconds - ctx.warmup)
    probe.stop()
    ctx.idle_cpu_per_s = probe.per_second("relay")
    return {
        "window_s": round(probe.window, 2),
        "relay_cpu_seconds_per_second": round(ctx.idle_cpu_per_s, 4),
        "cpu_seconds_per_second": probe.table(),
        "relay_rss_mb": round(status_kb(ctx.relay.pid, "VmRSS") / 1024, 1),
    }


async def scenario(ctx: Context, clients: int) -> dict[str, Any]:
    run_id = f"bench-{clients}c-{uuid.uuid4().hex[:10]}"
    out = ctx.base / f"clients-{clients}"
    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--clients-worker",
        "--port", str(ctx.relay.port), "--path", f"/v1/runs/{run_id}/logs/stream",
        "--clients", str(clients), "--out", str(out),
        "--timeout", str(ctx.seconds + 60), stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    assert worker.stdout is not None
    try:
        async with asyncio.timeout(60):
            ready = await worker.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError(f"clients' process: {ready!r}")
        await ctx.relay.until_attached(clients)
        rss_reset = reset_peak_rss(ctx.relay.pid)
        pids = {"relay": ctx.relay.pid, "clients": worker.pid, "producer": os.getpid()}
        if ctx.nats_pid is not None:
            pids["nats_server"] = ctx.nats_pid
        produced = await produce(ctx.bus, run_id, ctx.rate, ctx.seconds, ctx.warmup,
                                 CpuProbe(pids))
        async with asyncio.timeout(ctx.seconds + 90):
            summary = json.loads(await worker.stdout.readline())
            await worker.wait()
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    rss_peak_kb = status_kb(ctx.relay.pid, "VmHWM" if rss_reset else "VmRSS")
    hub = await ctx.relay.hub()
    await ctx.relay.until_archived(run_id)  # the archive's CPU stays out of the next window
    return report(ctx, clients, produced, summary, out, rss_peak_kb, hub)


def _read(path: Path) -> array[int]:
    values = array("q")
    values.frombytes(path.read_bytes())
    return values


def report(ctx: Context, clients: int, produced: Produced, summary: dict[str, Any],
           out: Path, rss_peak_kb: int, hub: dict[str, int]) -> dict[str, Any]:
    probe = produced.cpu
    assert probe is not None
    samples = {name: _read(out.with_suffix(f".{name}")) for name in SAMPLE_FILES}
    latency = percentiles(samples["at_socket"])
    frames = list(zip(samples["frame_ids"], samples["frame_socket"], samples["frame_process"],
                      strict=True))
    to_socket = [arrived - produced.emitted_at[i] for i, arrived, _ in frames
                 if i in produced.emitted_at]
    read_delay = [read_at - arrived for _, arrived, read_at in frames]
    first = min(produced.emitted_at.values(), default=0)
    by_second: dict[int, list[int]] = {}
    for i, arrived, _ in frames:
        if i in produced.emitted_at:
            second = (produced.emitted_at[i] - first) // 1_000_000_000
            by_second.setdefault(second, []).append(arrived - produced.emitted_at[i])
    trend = [round(sorted(v)[len(v) // 2] / 1e6, 1) for _, v in sorted(by_second.items())]
    lines_per_s = produced.window_lines / probe.window
    cpu = probe.per_second("relay")
    return {
        "clients": clients,
        "lines": produced.lines,
        "samples": latency["n"],
        "clients_complete": summary["ended"],
        "lines_per_client": {"min": summary["lines_min"], "max": summary["lines_max"]},
        "p50_ms": latency.get("p50_ms"),
        "p95_ms": latency.get("p95_ms"),
        "p99_ms": latency.get("p99_ms"),
        "max_ms": latency.get("max_ms"),
        "mean_ms": latency.get("mean_ms"),
        "received_by_client_process": percentiles(samples["at_process"]),
        "relay_cpu_seconds_per_second": round(cpu, 4),
        "relay_cpu_per_1000_lines_per_s": round(cpu / (lines_per_s / 1000), 4),
        "relay_cpu_per_1000_lines_per_s_net_of_idle":
            round((cpu - ctx.idle_cpu_per_s) / (lines_per_s / 1000), 4),
        "relay_rss_mb_peak": round(rss_peak_kb / 1024, 1),
        "steady_window_s": round(probe.window, 2),
        "lines_per_s_in_window": round(lines_per_s, 1),
        "cpu_seconds_per_second": probe.table(),
        "chunks": produced.chunks,
        "lines_per_chunk_mean": round(produced.lines / max(1, produced.chunks), 1),
        "breakdown": {
            "write_to_publish": percentiles(produced.batching),
            "publish_to_client_socket": percentiles(to_socket),
            "publish_ack": percentiles(produced.publish_ack),
            "client_socket_to_client_read": percentiles(read_delay),
            "publish_to_client_socket_p50_ms_by_second": trend,
        },
        "per_client_p50_ms": summary["per_client_p50_ms"],
        "per_client_p99_ms": summary["per_client_p99_ms"],
        "producer_max_late_ms": round(produced.max_late_ns / 1e6, 3),
        "runqueue_wait_seconds_per_second": probe.waits(),
        "client_process": {"loop_lag_ms": summary["loop_lag_ms"],
                           "reads_without_kernel_stamp": summary["unstamped_reads"],
                           "events_read_before_arrival": sum(d < 0 for d in read_delay)},
        "relay_hub": {k: hub[k] for k in ("dropped_total", "peak_queue")},
        "stream_comments": summary["comments"],
    }


def _ratio(many: dict[str, Any], one: dict[str, Any]) -> dict[str, float | None]:
    ratio: dict[str, float | None] = {}
    for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        a, b = many.get(key), one.get(key)
        ratio[key] = round(a / b, 2) if a and b else None
    return ratio


async def main(rate: float, seconds: float, warmup: float, many: int) -> dict[str, Any]:
    configure_logging("warning", "json")
    began = time.monotonic()
    load_at_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="zloth-bench-logs-") as tmp:
        base = Path(tmp)
        server = NatsServer(base / "nats")
        url = await server.start()
        nats_pids = pids_with(str(base / "nats"))
        try:
            relay = await Relay.start(url, base)
            try:
                bus = await Bus.connect(url, name="bench-logs")
                try:
                    ctx = Context(bus, relay, base, nats_pids[0] if nats_pids else None,
                                  rate, seconds, warmup)
                    await asyncio.sleep(1.0)  # past start-up work (provisioning, first report)
                    idle = await idle_baseline(ctx)
                    one = await scenario(ctx, 1)
                    lots = await scenario(ctx, many)
                finally:
                    await bus.close()
            finally:
                await relay.stop()
                relay_problems = relay.problems()
        finally:
            await server.stop()
    return {
        "benchmark": "logs",
        "rate_lines_per_s": rate,
        "seconds": seconds,
        "line_bytes": LINE_BYTES,
        "batcher": {"max_delay_ms": 100, "max_chunk_bytes": 64 * 1024},
        "latency_includes_batching_delay": True,
        "host_cpus": os.cpu_count(),
        "host_load_average_1m_at_start": load_at_start,
        "idle_baseline": idle,
        "scenarios": [one, lots],
        f"ratio_{many}_over_1_clients": _ratio(lots, one),
        f"ratio_{many}_over_1_clients_publish_to_client_socket":
            _ratio(lots["breakdown"]["publish_to_client_socket"],
                   one["breakdown"]["publish_to_client_socket"]),
        "relay_process": relay_problems,
        "wall_seconds": round(time.monotonic() - began, 1),
        "notes": NOTES,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="lines per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of each scenario left out of the CPU window")
    parser.add_argument("--clients", type=int, default=200, help="the many-clients scenario")
    # The clients' process (started by the benchmark itself):
    parser.add_argument("--clients-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients_worker:
        run_loop(lambda: clients_main(args.port, args.path, args.clients, args.out,
                                      args.timeout))
    else:
        print(json.dumps(asyncio.run(main(args.rate, args.seconds, args.warmup, args.clients)),
                         indent=2))
