"""The HTTP API under `/v1`: repos, tasks, a task's messages (each fanned out to one run per
executor), runs and their cancel, executors; `/openapi.json` describes it all.

Every bad input is a 4xx naming the field and writes nothing; POSTs honour Idempotency-Key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from schemas.base import new_id
from schemas.runs import TERMINAL_STATES, CancelRun, RepoRef, StartRun
from services.core.bus import Bus, correlation_id
from services.core.errors import BackpressureError, BusError
from services.core.http import HTTPError, decode_body, json_response
from services.gateway.bodies import CancelBody, CreateRepo, CreateRuns, CreateTask
from services.gateway.executors import ExecutorRegistry
from services.gateway.idempotency import Claim, Clock, Idempotency, PostHandler, Reply
from services.gateway.openapi import openapi_document
from services.gateway.outbox import DISPATCH_GRACE_SECONDS, Outbox
from services.gateway.repos import RepoUrlError, check_repo_url
from services.gateway.status import status_view
from services.gateway.store import GatewayStore, NewRun
from services.gateway.views import (
    AcceptedRuns,
    CancelAccepted,
    Message,
    Repo,
    RepoList,
    Task,
)

MAX_BODY_BYTES = 1 << 20
DEFAULT_PAGE, MAX_PAGE = 50, 200


def unavailable(exc: BusError) -> HTTPError:
    if isinstance(exc, BackpressureError):
        return HTTPError(
            503, "queue_full", "the run queue is full; retry later",
            headers={"Retry-After": "10"},
        )
    return HTTPError(
        503, "bus_unavailable", "the message bus is unavailable; retry later",
        headers={"Retry-After": "2"},
    )


class Api:
    def __init__(
        self, *, store: GatewayStore, bus: Bus, registry: ExecutorRegistry, outbox: Outbox,
        keys: Idempotency, clock: Clock, default_timeout_seconds: float | None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._registry = registry
        self._outbox = outbox
        self._keys = keys
        self._clock = clock
        self._default_timeout = default_timeout_seconds
        self._openapi = msgspec.json.encode(openapi_document())

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/repos", self._post(self.create_repo), methods=["POST"]),
            Route("/v1/repos", self.list_repos, methods=["GET"]),
            Route("/v1/tasks", self._post(self.create_task), methods=["POST"]),
            Route("/v1/tasks", self.list_tasks, methods=["GET"]),
            Route("/v1/tasks/{id}", self.get_task, methods=["GET"]),
            Route("/v1/tasks/{id}/runs", self._post(self.create_runs), methods=["POST"]),
            Route("/v1/runs/{id}", self.get_run, methods=["GET"]),
            Route("/v1/runs/{id}/cancel", self._post(self.cancel_run), methods=["POST"]),
            Route("/v1/executors", self.list_executors, methods=["GET"]),
            Route("/v1/status", self.status, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]

    def _post(self, handler: PostHandler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            await _read_bounded(request)
            return await self._keys.handle(request, handler)

        return endpoint

    # -- repos --------------------------------------------------------------------------

    async def create_repo(self, request: Request, claim: Claim | None) -> Reply:
        body = await decode_body(request, CreateRepo)
        try:
            url, branch = await asyncio.to_thread(check_repo_url, body.url)
        except RepoUrlError as exc:
            raise HTTPError(422, "invalid_url", str(exc), field="url") from None
        existing = await self._store.repo_by_url(url)
        if existing is None:
            repo = Repo(id=new_id("repo"), url=url, default_branch=branch,
                        created_at=self._clock())
            encoded = msgspec.json.encode(repo)
            if await self._store.add_repo(repo, claim.record(201, encoded) if claim else None):
                return Reply(201, encoded)
            existing = await self._store.repo_by_url(url)  # added meanwhile by another request
        return Reply(200, msgspec.json.encode(existing))

    async def list_repos(self, _: Request) -> Response:
        return json_response(RepoList(repos=await self._store.repos()))

    # -- tasks --------------------------------------------------------------------------

    async def create_task(self, request: Request, claim: Claim | None) -> Reply:
        body = await decode_body(request, CreateTask)
        if await self._store.repo(body.repo_id) is None:
            raise HTTPError(422, "unknown_repo", f"no repository {body.repo_id!r}",
                            field="repo_id")
        task = Task(id=new_id("task"), repo_id=body.repo_id, title=body.title,
                    created_at=self._clock())
        encoded = msgspec.json.encode(task)
        await self._store.add_task(task, claim.record(201, encoded) if claim else None)
        return Reply(201, encoded)

    async def list_tasks(self, request: Request) -> Response:
        limit = _int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        page = await self._store.tasks(limit, request.query_params.get("before"))
        if page is None:
            raise HTTPError(422, "invalid_query", "`before` names no task", field="before")
        return json_response(page)

    async def get_task(self, request: Request) -> Response:
        detail = await self._store.task_detail(request.path_params["id"])
        if detail is None:
            raise HTTPError(404, "not_found", "no such task")
        return json_response(detail)

    # -- runs ---------------------------------------------------------------------------

    async def create_runs(self, request: Request, claim: Claim | None) -> Reply:
        """Accept one message: message + runs + StartRuns in one transaction, then publish.

        Only when no StartRun left for sure is the accept undone and answered 503; once one
        may have left, the accept stands (202) and the outbox delivers the rest.
        """
        body = await decode_body(request, CreateRuns)
        _check_runs_body(body)
        task = await self._store.task(request.path_params["id"])
        if task is None:
            raise HTTPError(404, "not_found", "no such task")
        repo = await self._store.repo(task.repo_id)
        if repo is None:  # tasks reference repos (foreign key): a broken database
            raise HTTPError(500, "internal_error", "the task's repository is missing")
        await self._check_executors(body.executors)
        message, runs, commands = await self._plan(task, repo, body)
        encoded = msgspec.json.encode(AcceptedRuns(message=message, runs=[r.run for r in runs]))
        record = claim.record(202, encoded) if claim else None
        dispatch_after = self._clock().timestamp() + DISPATCH_GRACE_SECONDS
        await self._store.accept(message, runs, dispatch_after, record)
        published = await self._outbox.publish_accepted(commands)
        if published.refused is not None and await self._store.discard(
            message.id, len(runs), dispatch_after, record
        ):
            raise unavailable(published.refused)
        return Reply(202, encoded)

    async def _check_executors(self, names: Sequence[str]) -> None:
        if not self._bus.connected:  # fail before writing: nothing may be half-accepted
            raise unavailable(BusError("not connected to NATS"))
        try:
            known = await self._registry.announced()
        except BusError as exc:
            raise unavailable(exc) from None
        if not known:
            raise HTTPError(
                422, "no_executor_online",
                "no executor runner is online (none has announced itself in zloth_executors)",
                field="executors",
            )
        unknown = [name for name in names if name not in known]
        if unknown:
            raise HTTPError(
                422, "unknown_executor",
                f"unknown executor(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                field="executors",
            )
        # A runner announces a CLI it cannot find as not installed: a run for it would
        # only wait in the queue until it timed out.
        missing = [name for name in names if known[name].get("installed") is False]
        if missing:
            raise HTTPError(
                422, "executor_not_installed",
                f"executor(s) not installed on any runner: {', '.join(missing)}",
                field="executors",
            )

    async def _plan(
        self, task: Task, repo: Repo, body: CreateRuns
    ) -> tuple[Message, list[NewRun], list[StartRun]]:
        """The message, its runs, their StartRuns; a follow-up continues each executor's
        latest run in the task (and its agent session, when it reported one)."""
        now = self._clock()
        timeout = body.timeout_seconds or self._default_timeout
        message = Message(
            id=new_id("msg"), task_id=task.id, instruction=body.instruction,
            executors=list(body.executors), base_ref=body.base_ref, timeout_seconds=timeout,
            created_at=now,
        )
        previous = await self._store.latest_runs(task.id, body.executors)
        ref = RepoRef(repo_id=repo.id, url=repo.url, default_branch=repo.default_branch)
        runs: list[NewRun] = []
        commands: list[StartRun] = []
        for executor in body.executors:
            before = previous.get(executor)
            command = StartRun(
                run_id=new_id("run"), task_id=task.id, message_id=message.id, repo=ref,
                base_ref=body.base_ref, instruction=body.instruction, executor=executor,
                resume_session=before.session_id if before else None,
                previous_run_id=before.id if before else None, accepted_at=now,
                timeout_seconds=timeout,
            )
            commands.append(command)
            runs.append(NewRun.of(command, correlation_id.get()))
        return message, runs, commands

    async def get_run(self, request: Request) -> Response:
        flag = request.query_params.get("diff", "1").lower()
        if flag not in {"0", "1", "true", "false"}:
            raise HTTPError(422, "invalid_query", "`diff` is 0 or 1", field="diff")
        run = await self._store.run(request.path_params["id"], with_diff=flag in {"1", "true"})
        if run is None:
            raise HTTPError(404, "not_found", "no such run")
        return json_response(run)

    async def cancel_run(self, request: Request, claim: Claim | None) -> Reply:
        body = await decode_body(request, CancelBody) if await request.body() else CancelBody()
        run = await self._store.run(request.path_params["id"], with_diff=False)
        if run is None:
            raise HTTPError(404, "not_found", "no such run")
        if run.state in TERMINAL_STATES:
            raise HTTPError(409, "run_finished", f"the run already ended ({run.state})")
        cancel = CancelRun(run_id=run.id, requested_at=self._clock(),
                           reason=body.reason or "canceled by user")
        if not self._bus.connected:  # a publish would wait out its timeout in nats' buffer
            raise unavailable(BusError("not connected to NATS"))
        try:
            await self._bus.publish(cancel)
        except BusError as exc:
            raise unavailable(exc) from None
        return Reply(202, msgspec.json.encode(CancelAccepted(id=run.id, state=run.state)))

    # -- executors, openapi -------------------------------------------------------------

    async def list_executors(self, _: Request) -> Response:
        try:
            known = await self._registry.announced()
        except BusError as exc:
            raise unavailable(exc) from None
        return json_response({"executors": [known[name] for name in sorted(known)]})

    async def status(self, _: Request) -> Response:
        return json_response(await status_view(self._bus, self._store, self._registry))

    async def openapi(self, _: Request) -> Response:
        return Response(self._openapi, media_type="application/json")


def _check_runs_body(body: CreateRuns) -> None:
    if not body.instruction.strip():
        raise HTTPError(422, "invalid_field", "instruction must not be blank",
                        field="instruction")
    if len(set(body.executors)) != len(body.executors):
        raise HTTPError(422, "invalid_field", "executors must be unique", field="executors")


async def _read_bounded(request: Request) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPError(413, "body_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    if len(await request.body()) > MAX_BODY_BYTES:
        raise HTTPError(413, "body_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise HTTPError(422, "invalid_query", f"`{name}` is an integer in {low}..{high}",
                        field=name)
    return int(raw)
