"""A fake LLM provider over real HTTP on 127.0.0.1 for the LLM client's tests.

It speaks OpenAI (Responses, Chat Completions), Anthropic Messages and Gemini
generateContent / streamGenerateContent, JSON and SSE, checks each provider's auth header,
sends their rate-limit headers, and injects faults: 429 with or without Retry-After, 5xx,
hangs, streams cut mid-body or ended without their terminal event. It records every
request with its arrival time. It runs its own event loop in a thread, so the load the
client puts on the test's loop cannot skew what the server measures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from services.core.bus import Bus
from services.core.llm.secrets import Keyring, SecretStore
from services.core.llm.settings import LLMSettings, ProviderSettings
from tests.support.fake_llm_wire import (
    error_body,
    json_body,
    presented_key,
    prompt_of,
    rate_headers,
    route,
    sse_events,
)

ROOT = Path(__file__).resolve().parents[2]  # `python -m tests.…` runs from here
API_KEY = "sk-fake-0123456789abcdefSECRET"
FaultKind = Literal["ok", "429", "5xx", "hang", "cut", "truncate", "down"]


@dataclass(frozen=True)
class Fault:
    kind: FaultKind = "ok"
    retry_after: float | None = None  # 429: seconds announced (None: no header)
    status: int = 503  # 5xx
    hang: float = 30.0


@dataclass(frozen=True)
class Hit:
    """One request as the server saw it (monotonic times of this process)."""

    seq: int
    at: float
    provider: str
    api: str
    prompt: str
    stream: bool
    fault: str
    status: int
    retry_after: float | None
    answered_at: float


Plan = Callable[[int, str], Fault]  # (attempt number of this prompt, prompt) -> fault


@dataclass
class RateRule:
    """`limit` requests per `window` seconds, above it 429 (with Retry-After when
    `retry_after`). `bucket`: a token bucket of capacity `limit` refilled at limit/window,
    as OpenAI and Anthropic document theirs; otherwise a sliding window (never more than
    `limit` accepted in any `window`), the strictest reading."""

    limit: int
    window: float
    retry_after: bool = True
    bucket: bool = False
    accepted: deque[float] = field(default_factory=deque)
    tokens: float = -1.0
    at: float = 0.0

    def admit(self, now: float) -> tuple[bool, int, float, float]:
        """(accepted, remaining after it, seconds until full, seconds until one more)."""
        if self.bucket:
            return self._bucket(now)
        while self.accepted and self.accepted[0] <= now - self.window:
            self.accepted.popleft()
        ok = len(self.accepted) < self.limit
        if ok:
            self.accepted.append(now)
        full = self.accepted[-1] + self.window - now if self.accepted else 0.0
        one = max(0.0, self.accepted[0] + self.window - now) if self.accepted else 0.0
        return ok, self.limit - len(self.accepted), full, 0.0 if ok else one

    def _bucket(self, now: float) -> tuple[bool, int, float, float]:
        rate = self.limit / self.window
        if self.tokens < 0:
            self.tokens = float(self.limit)
        self.tokens = min(float(self.limit), self.tokens + (now - self.at) * rate)
        self.at = now
        ok = self.tokens >= 1.0
        if ok:
            self.tokens -= 1.0
        one = 0.0 if ok else (1.0 - self.tokens) / rate
        return ok, math.floor(self.tokens), (self.limit - self.tokens) / rate, one


class FakeLLM:
    def __init__(self, *, api_key: str = API_KEY, plan: Plan | None = None,
                 rule: RateRule | None = None, rate_headers: bool = True,
                 latency: float = 0.0) -> None:
        self.api_key = api_key
        self.plan = plan
        self.rule = rule
        self.rate_headers = rate_headers
        self.latency = latency
        self.down = False
        self.port = 0
        self._lock = threading.Lock()
        self._hits: list[Hit] = []
        self._attempts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.echoed_keys = 0  # 401 bodies that repeated the presented key
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hits(self) -> list[Hit]:
        with self._lock:
            return list(self._hits)

    def count(self, prompt_prefix: str = "") -> int:
        return sum(1 for h in self.hits() if h.prompt.startswith(prompt_prefix))

    def start(self) -> FakeLLM:
        self._thread = threading.Thread(target=self._run, name="fake-llm", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake LLM server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()
        writers: set[asyncio.StreamWriter] = set()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            writers.add(writer)
            try:
                await self._connection(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client hung up (timeouts, cancelled calls): nothing to answer
            finally:
                tasks.discard(task)
                writers.discard(writer)
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        # Closing the sockets ends every handler (hangs wait on `_stop`): no cancellation,
        # which asyncio's stream callback would log as an error.
        for writer in list(writers):
            writer.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                          ) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            lines = head.decode("latin-1").split("\r\n")
            _method, target, _version = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                keep = await self._respond(target, headers, json.loads(body or b"{}"), writer)
            finally:
                with self._lock:
                    self.in_flight -= 1
            if not keep:
                return

    async def _respond(self, target: str, headers: dict[str, str], body: Any,
                       writer: asyncio.StreamWriter) -> bool:
        now = time.monotonic()
        found = route(target, body)
        if found is None:
            await _write(writer, 404, {}, {"error": {"message": f"no route {target}"}})
            return True
        provider, api, stream = found
        if presented_key(provider, headers) != self.api_key:
            presented = presented_key(provider, headers)
            with self._lock:
                self.echoed_keys += 1
            # OpenAI echoes (part of) a wrong key back: the client must not log it.
            await _write(writer, 401, {}, {"error": {
                "message": f"Incorrect API key provided: {presented}", "type": "auth"}})
            return True
        prompt = prompt_of(provider, api, body)
        with self._lock:
            attempt = self._attempts[prompt] = self._attempts.get(prompt, 0) + 1
        fault = Fault(kind="down") if self.down else (
            self.plan(attempt, prompt) if self.plan else Fault())
        extra: dict[str, str] = {}
        if fault.kind == "ok" and self.rule is not None:
            with self._lock:
                ok, remaining, reset, free_in = self.rule.admit(now)
            if self.rate_headers:
                extra = rate_headers(provider, self.rule.limit, remaining, reset)
            if not ok:
                # Retry-After is whole seconds (RFC 9110): never earlier than the free slot.
                announced = max(1, math.ceil(free_in)) if self.rule.retry_after else None
                fault = Fault(kind="429", retry_after=announced)
        status = {"ok": 200, "429": 429, "5xx": fault.status, "down": 503}.get(fault.kind, 200)
        self._record(now, provider, api, prompt, stream, fault, status)
        if self.latency:
            await asyncio.sleep(self.latency)
        return await self._answer(writer, provider, api, stream, prompt, fault, status, extra)

    def _record(self, now: float, provider: str, api: str, prompt: str, stream: bool,
                fault: Fault, status: int) -> None:
        with self._lock:
            self._hits.append(Hit(seq=len(self._hits), at=now, provider=provider, api=api,
                                  prompt=prompt, stream=stream, fault=fault.kind, status=status,
                                  retry_after=fault.retry_after, answered_at=time.monotonic()))

    async def _answer(self, writer: asyncio.StreamWriter, provider: str, api: str,
                      stream: bool, prompt: str, fault: Fault, status: int,
                      extra: dict[str, str]) -> bool:
        if fault.kind == "hang":
            assert self._stop is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(fault.hang):
                    await self._stop.wait()
            return False
        if fault.kind == "429":
            headers = dict(extra)
            if fault.retry_after is not None:
                headers["retry-after"] = str(int(fault.retry_after))
            await _write(writer, 429, headers, error_body(provider, 429, fault.retry_after))
            return True
        if fault.kind in ("5xx", "down"):
            await _write(writer, status, extra, error_body(provider, status, None))
            return True
        text = f"reply {hashlib.sha256(prompt.encode()).hexdigest()[:8]} to {prompt[:24]}"
        usage = (max(1, len(prompt) // 4), len(text) // 4 + 1)
        if stream:
            events = sse_events(provider, api, text, usage)
            return await _write_sse(writer, extra, events, fault.kind)
        payload = json_body(provider, api, text, usage)
        if fault.kind in ("cut", "truncate"):
            raw = json.dumps(payload).encode()
            head = _head(200, {**extra, "content-type": "application/json",
                               "content-length": str(len(raw))})
            writer.write(head + raw[: len(raw) // 2])
            await writer.drain()
            return False  # close mid-body
        await _write(writer, 200, extra, payload)
        return True


_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            529: "Overloaded"}


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _write(writer: asyncio.StreamWriter, status: int, headers: dict[str, str],
                 payload: Any) -> None:
    raw = json.dumps(payload).encode()
    writer.write(_head(status, {**headers, "content-type": "application/json",
                                "content-length": str(len(raw))}) + raw)
    await writer.drain()


async def _write_sse(writer: asyncio.StreamWriter, headers: dict[str, str],
                     events: list[bytes], fault: str) -> bool:
    writer.write(_head(200, {**headers, "content-type": "text/event-stream",
                             "transfer-encoding": "chunked"}))
    if fault == "truncate":
        events = events[:-1]  # a clean end of body, but without the terminal event
    for i, data in enumerate(events):
        if fault == "cut" and i == len(events) // 2:
            await writer.drain()
            return False  # the connection drops mid-stream
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


def fake_settings(fake: FakeLLM | FakeProcess | str, **overrides: Any) -> LLMSettings:
    """Client settings aimed at `fake` (or a base URL) for all three providers, with
    test-sized timeouts. Provider fields go in `provider={...}`; the rest are LLMSettings
    fields."""
    base_url = fake if isinstance(fake, str) else fake.base_url
    provider_fields: dict[str, Any] = {"connect_timeout": 1.0, "read_timeout": 1.0,
                                       "attempt_timeout": 2.0}
    provider_fields.update(overrides.pop("provider", {}))
    providers = {name: ProviderSettings(base_url=base_url, key_name=f"llm.{name}",
                                        **provider_fields)
                 for name in ("openai", "anthropic", "google")}
    values: dict[str, Any] = {"providers": providers, "backoff_base": 0.05, "backoff_max": 0.5,
                              "max_attempts": 4, "deadline_seconds": 10.0,
                              "instance_id": "test"}
    values.update(overrides)
    return LLMSettings(**values)


# A fixed test master key (32 bytes, base64): never use it for anything real.
MASTER_KEY = "test1:" + base64.b64encode(bytes(range(32))).decode()


async def secret_store(bus: Bus, master_key: str = MASTER_KEY, api_key: str = API_KEY
                       ) -> SecretStore:
    """A secret store holding `api_key` for all three providers."""
    store = SecretStore(bus, Keyring.parse(master_key))
    await store.ensure()
    for name in ("openai", "anthropic", "google"):
        await store.put(f"llm.{name}", api_key)
    return store


def settings_json(settings: LLMSettings) -> str:
    """For handing settings to a replica process."""
    return msgspec.json.encode(settings).decode()


class FakeProcess:
    """The fake in a process of its own, for measurements: in the client's process its
    thread and the client would take turns on the GIL, adding milliseconds of jitter
    between a request leaving and the server seeing it. Plain rate-limited serving only
    (no plans, no `down`); its hits come back when it stops."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.base_url = f"http://127.0.0.1:{port}"

    @classmethod
    async def start(cls, *, limit: int = 0, window: float = 1.0, bucket: bool = False,
                    latency: float = 0.0) -> FakeProcess:
        argv = ["--limit", str(limit), "--window", str(window), "--latency", str(latency)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.fake_llm", *argv, *(["--bucket"] * bucket),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            port = int(await proc.stdout.readline())
        return cls(proc, port)

    async def stop(self) -> list[Hit]:
        async with asyncio.timeout(30):
            out, _ = await self.proc.communicate(b"")
        return [Hit(**json.loads(line)) for line in out.decode().splitlines() if line.strip()]


def main(argv: list[str]) -> None:
    """`python -m tests.support.fake_llm`: prints the port, serves until stdin closes,
    then prints every hit as a JSON line (see FakeProcess)."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.fake_llm")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--bucket", action="store_true")
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)
    rule = RateRule(limit=args.limit, window=args.window, bucket=args.bucket) if args.limit \
        else None
    fake = FakeLLM(rule=rule, latency=args.latency).start()
    print(fake.port, flush=True)
    sys.stdin.read()
    fake.stop()
    for hit in fake.hits():
        print(json.dumps(dataclasses.asdict(hit)))


if __name__ == "__main__":
    main(sys.argv[1:])
