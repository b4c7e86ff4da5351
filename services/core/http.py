"""HTTP plumbing shared by the services that serve HTTP: request ids (which become the
correlation id carried through every NATS hop), JSON errors, body decoding that names the
bad field, `/healthz` and `/metrics`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.core import metrics, tracing
from services.core.bus import correlation_id
from services.core.telemetry import get_logger

if TYPE_CHECKING:
    from services.core.runtime import Service

T = TypeVar("T")
REQUEST_ID_HEADER = "x-request-id"


class HTTPError(Exception):
    """Raised by route handlers; rendered as a JSON error with the request id."""

    def __init__(
        self, status: int, code: str, message: str, *, field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": correlation_id.get()}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        msgspec.json.encode(value), status_code=status, media_type="application/json",
        headers=headers,
    )


async def decode_body(request: Request, kind: type[T]) -> T:
    """Decode and validate a JSON body; 400 for malformed JSON, 422 naming the field."""
    raw = await request.body()
    try:
        data = msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPError(422, "invalid_body", "request body must be a JSON object", field="$")
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = None
        if " - at `$." in message:
            message, _, path = message.partition(" - at `$.")
            field = path.rstrip("`")
        elif message.startswith(("Object missing required field", "Object contains unknown")):
            field = message.split("`")[1]
        raise HTTPError(422, "invalid_field", message, field=field) from None


class RequestContextMiddleware:
    """Pure ASGI (streaming responses pass through untouched)."""

    def __init__(self, app: ASGIApp, service: str = "zloth") -> None:
        self.app = app
        self.service = service
        self.log = get_logger(service=service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        request_id = headers.get(REQUEST_ID_HEADER) or f"req-{uuid.uuid4().hex[:16]}"
        token = correlation_id.set(request_id)
        structlog.contextvars.bind_contextvars(correlation_id=request_id)
        started = time.monotonic()
        status = 500

        async def send_wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        try:
            with tracing.span(f"HTTP {scope['method']} {scope.get('path', '')}", None,
                              {"zloth.service": self.service, "zloth.request_id": request_id}):
                await self._call(scope, receive, send_wrapped)
        finally:
            route = _route_template(scope)
            elapsed = time.monotonic() - started
            metrics.http_request_duration.labels(
                self.service, route, scope["method"], str(status)
            ).observe(elapsed)
            self.log.info("http_request", method=scope["method"], route=route, status=status,
                          duration_ms=round(elapsed * 1000, 2))
            structlog.contextvars.unbind_contextvars("correlation_id")
            correlation_id.reset(token)

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except HTTPError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)
            await response(scope, receive, send)
        except Exception:  # top of a unit of work: answer 500, log the cause
            self.log.exception("http_unhandled_error", path=scope.get("path"))
            response = error_response(500, "internal_error", "internal error")
            await response(scope, receive, send)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


def ops_routes(services: Sequence[Service]) -> list[Route]:
    async def healthz(_: Request) -> Response:
        checks: dict[str, Any] = {}
        for service in services:
            checks[service.name] = await service.health() if service.health else {"ok": True}
        ok = all(check.get("ok", False) for check in checks.values())
        return json_response({"ok": ok, "services": checks}, status=200 if ok else 503)

    async def metrics_endpoint(_: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return [Route("/healthz", healthz), Route("/metrics", metrics_endpoint)]


Endpoint = Callable[[Request], Awaitable[Response]]
