"""One local HTTP server that answers as all three providers (their paths do not clash),
records every request, and injects faults: an HTTP error status (400, 429, 500, …) or a
hang (headers never sent). "Unreachable" needs no server: use a port nobody listens on.

Threads, not asyncio: the agent CLIs are separate processes, and a server in its own
threads keeps answering while a test's event loop is busy."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.fake_providers import anthropic, gemini, openai
from tests.support.fake_providers.turns import Script

_GEMINI = re.compile(r"^/v1(?:beta)?/models/([^/:]+):(streamGenerateContent|generateContent)")


@dataclass(frozen=True)
class Fault:
    """`status`: answer every model request with this HTTP error; `hang`: never answer."""

    status: int | None = None
    hang: bool = False
    retry_after: float | None = None


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeProvider:
    script: Script = field(default_factory=Script)
    fault: Fault | None = None
    requests: list[Recorded] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeProvider not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeProvider:
        provider = self

        class Handler(_Handler):
            fake = provider

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True  # a hung request must not block stop()
        self._server.block_on_close = False
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hung requests
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def model_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeProvider
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read `requests`

    def do_GET(self) -> None:
        self._record({})
        self._json(404, {"error": {"message": f"no such path {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        self._record(body if isinstance(body, dict) else {})
        fault = self.fake.fault
        if fault is not None and fault.hang:
            self.fake._stopping.wait()
            return
        gem = _GEMINI.match(self.path)
        if self.path.startswith("/v1/messages"):
            module: Any = anthropic
        elif self.path.startswith("/v1/responses"):
            module = openai
        elif gem:
            module = gemini
        else:
            self._json(404, {"error": {"message": f"no such path {self.path}"}})
            return
        if fault is not None and fault.status is not None:
            extra = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after else {}
            message = f"fake provider error {fault.status}"
            self._json(fault.status, module.error_body(fault.status, message), extra)
        elif module is gemini:
            chunks = gemini.reply(body, self.fake.script, gem.group(1) if gem else "")
            if gem and gem.group(2) == "generateContent":
                self._json(200, chunks[0])
            else:
                self._sse([(None, chunk) for chunk in chunks])
        else:
            self._sse(list(module.reply(body, self.fake.script)))

    def _record(self, body: dict[str, Any]) -> None:
        self.fake.requests.append(Recorded(self.command, self.path, dict(self.headers), body))

    def _json(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None
              ) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[tuple[str | None, dict[str, Any]]]) -> None:
        out = b"".join(
            (f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(data).encode()
            + b"\n\n"
            for name, data in events
        )
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
