"""Another replica of the LLM client in its own process, for the breaker and cache tests.

    python -m tests.support.llm_replica NATS_URL SETTINGS_JSON   (ZLOTH_MASTER_KEY set)

Prints "ready", then reads one JSON request per stdin line and answers one JSON line each:
{"ok", "cached", "attempts", "error", "retry_after", "elapsed"}. Exits at end of input.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import msgspec

from services.core.bus import Bus
from services.core.llm import Keyring, LLMClient, LLMError, LLMSettings, Request, SecretStore
from services.core.telemetry import configure_logging
from tests.support.fake_llm import ROOT


async def serve(url: str, settings: LLMSettings) -> None:
    configure_logging("warning", "json")  # stderr: stdout carries the answers
    bus = await Bus.connect(url, name=f"llm-replica-{os.getpid()}")
    store = SecretStore(bus, Keyring.from_env(os.environ))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with LLMClient(settings, bus, store) as client:
        print("ready", flush=True)
        while line := await reader.readline():
            print(json.dumps(await call(client, json.loads(line))), flush=True)
    await bus.close()


async def call(client: LLMClient, fields: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    answer: dict[str, Any] = {"ok": False, "cached": False, "attempts": 0, "error": None,
                              "retry_after": None}
    try:
        response = await client.complete(msgspec.convert(fields, Request))
    except LLMError as exc:
        answer.update(error=type(exc).__name__, retry_after=exc.next_retry_delay)
    else:
        answer.update(ok=True, cached=response.cached, attempts=response.attempts)
    answer["elapsed"] = time.monotonic() - started
    return answer


class Replica:
    """The test's handle on a replica process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, settings_json: str, master_key: str) -> Replica:
        env = {**os.environ, "ZLOTH_MASTER_KEY": master_key}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.llm_replica", url, settings_json,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT)
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = await proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"replica did not start: {line!r}")
        return cls(proc)

    async def call(self, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(fields).encode() + b"\n")
        await self.proc.stdin.drain()
        async with asyncio.timeout(30):
            answer: dict[str, Any] = json.loads(await self.proc.stdout.readline())
        return answer

    async def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], msgspec.json.decode(sys.argv[2], type=LLMSettings)))
