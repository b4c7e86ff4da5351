"""log-relay's HTTP routes.

    GET /v1/runs/{run_id}/logs/stream     SSE: `log` events (id = ZLOTH_LOGS seq), then `end`
    GET /v1/runs/{run_id}/logs            JSON page: ?after=<id>&limit=<n>
    GET /v1/tasks/{task_id}/events/stream SSE: `run` events (id = ZLOTH_EVT seq), no end

Streams resume after `Last-Event-ID` (or `?after=`; the header wins, since EventSource
sends it on reconnect while the URL keeps the original query). A run whose log has expired
(archive removed by retention, chunks dropped by the stream) is a 410 `log_expired` on
both run routes: EventSource does not retry it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from functools import partial

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.core.http import HTTPError, json_response
from services.log_relay.follow import follow, run_log
from services.log_relay.history import LogExpired, expired_log, history
from services.log_relay.hub import Hub, Session
from services.log_relay.settings import LogRelaySettings
from services.log_relay.sse import EventStreamResponse, Frames
from services.log_relay.store import ArchiveStore, Expired
from services.log_relay.topics import run_logs, task_runs, valid_id

RUN_STREAM = "/v1/runs/{run_id}/logs/stream"
RUN_HISTORY = "/v1/runs/{run_id}/logs"
TASK_STREAM = "/v1/tasks/{task_id}/events/stream"
MAX_PAGE = 1000


class RelayApi:
    def __init__(self, hub: Hub, archive: ArchiveStore, settings: LogRelaySettings) -> None:
        self._hub = hub
        self._archive = archive
        self._settings = settings

    def routes(self) -> list[Route]:
        return [
            Route(RUN_STREAM, self.run_stream, methods=["GET"]),
            Route(RUN_HISTORY, self.run_history, methods=["GET"]),
            Route(TASK_STREAM, self.task_stream, methods=["GET"]),
        ]

    async def run_stream(self, request: Request) -> Response:
        run_id = _path_id(request, "run_id")
        after = _after(request)
        topic = run_logs(run_id)
        expired = await expired_log(self._hub.bus, self._archive, run_id)
        if expired is not None:
            raise _gone(expired)

        def frames(session: Session) -> AsyncGenerator[bytes, None]:
            return run_log(self._hub, self._archive, topic, run_id, session, after,
                           self._settings.keepalive_seconds)

        return self._sse(RUN_STREAM, frames)

    async def task_stream(self, request: Request) -> Response:
        task_id = _path_id(request, "task_id")
        after = _after(request)
        topic = task_runs(task_id)

        def frames(session: Session) -> AsyncGenerator[bytes, None]:
            return follow(self._hub, topic, session, after, self._settings.keepalive_seconds)

        return self._sse(TASK_STREAM, frames)

    def _sse(self, route: str, frames: Frames) -> Response:
        return EventStreamResponse(partial(self._hub.session, route), frames,
                                   write_timeout=self._settings.client_write_timeout_seconds)

    async def run_history(self, request: Request) -> Response:
        run_id = _path_id(request, "run_id")
        after = _int_param(request.query_params.get("after"), "after", 0)
        limit = _int_param(request.query_params.get("limit"), "limit", 100)
        if not 1 <= limit <= MAX_PAGE:
            raise HTTPError(422, "invalid_field", f"limit must be 1..{MAX_PAGE}", field="limit")
        try:
            page = await history(self._hub.bus, self._archive, run_id, after, limit,
                                 self._settings.history_page_bytes)
        except LogExpired as exc:
            raise _gone(exc.expired) from None
        return json_response(page)


def _gone(expired: Expired) -> HTTPError:
    why = "older than the archive's retention" if expired.reason == "age" else (
        "evicted to keep the archive within its size budget")
    return HTTPError(410, "log_expired",
                     f"the log of run {expired.run_id} has expired: its archive was removed"
                     f" on {expired.expired_at:%Y-%m-%d %H:%M:%S} UTC ({why})")


def _path_id(request: Request, name: str) -> str:
    value = str(request.path_params[name])
    if not valid_id(value):
        raise HTTPError(422, "invalid_field", f"{name} must be 1-128 of [A-Za-z0-9_-]",
                        field=name)
    return value


def _after(request: Request) -> int:
    header = request.headers.get("last-event-id")
    if header:
        return _int_param(header, "Last-Event-ID", 0)
    return _int_param(request.query_params.get("after"), "after", 0)


def _int_param(raw: str | None, name: str, default: int) -> int:
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise HTTPError(422, "invalid_field", f"{name} must be a non-negative integer",
                        field=name)
    return int(raw)
