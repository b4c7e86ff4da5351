"""The OpenAPI 3.1 document of the gateway, built from the very Structs the routes decode and
encode (msgspec's JSON Schema 2020-12 is OpenAPI 3.1's dialect), served at /openapi.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from services.gateway import bodies, views

_REF = "#/components/schemas/{name}"
_ERRORS_POST = {400: "malformed JSON", 409: "conflict (see `error.code`)", 413: "body too large",
                422: "invalid input (`error.field` names it)"}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # path | query | header
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    ok: tuple[int, type[msgspec.Struct] | None]
    request: type[msgspec.Struct] | None = None
    errors: dict[int, str] = field(default_factory=dict)
    params: tuple[Param, ...] = ()


_ID = Param("id", "path", "the resource id", required=True)
_KEY = Param("Idempotency-Key", "header",
             "retrying with the same key replays the first answer instead of acting twice")
_DIFF = Param("diff", "query", "0 leaves the diff out (default 1)",
              {"type": "string", "enum": ["0", "1", "true", "false"]})
_LIMIT = Param("limit", "query", "page size", {"type": "integer", "minimum": 1, "maximum": 200})
_BEFORE = Param("before", "query", "the `next_before` of the previous page")
_UNAVAILABLE = {503: "the message bus is unavailable or the run queue is full (Retry-After)"}

OPERATIONS: tuple[Op, ...] = (
    Op("post", "/v1/repos", "Register a repository (the same url again returns it, 200)",
       (201, views.Repo), bodies.CreateRepo, _ERRORS_POST, (_KEY,)),
    Op("get", "/v1/repos", "List repositories", (200, views.RepoList)),
    Op("post", "/v1/tasks", "Create a task on a repository", (201, views.Task),
       bodies.CreateTask, _ERRORS_POST, (_KEY,)),
    Op("get", "/v1/tasks", "List tasks, newest first", (200, views.TaskList),
       errors={422: "bad paging parameter"}, params=(_LIMIT, _BEFORE)),
    Op("get", "/v1/tasks/{id}", "A task with its messages and runs", (200, views.TaskDetail),
       errors={404: "no such task"}, params=(_ID,)),
    Op("post", "/v1/tasks/{id}/runs", "Send a message: one run per executor, in parallel",
       (202, views.AcceptedRuns), bodies.CreateRuns,
       {**_ERRORS_POST, 404: "no such task", **_UNAVAILABLE}, (_ID, _KEY)),
    Op("get", "/v1/runs/{id}", "A run's newest state, result and diff", (200, views.Run),
       errors={404: "no such run", 422: "bad `diff` parameter"}, params=(_ID, _DIFF)),
    Op("post", "/v1/runs/{id}/cancel", "Cancel a run (its agent is stopped wherever it runs)",
       (202, views.CancelAccepted), bodies.CancelBody,
       {**_ERRORS_POST, 404: "no such run", 409: "the run already ended", **_UNAVAILABLE},
       (_ID, _KEY)),
    Op("get", "/v1/executors", "Executors announced by online runners",
       (200, views.ExecutorList), errors=_UNAVAILABLE),
)


def openapi_document() -> dict[str, Any]:
    kinds: list[type[msgspec.Struct]] = [views.ErrorBody]
    for op in OPERATIONS:
        kinds += [kind for kind in (op.request, op.ok[1]) if kind is not None]
    unique = list(dict.fromkeys(kinds))
    schemas, components = msgspec.json.schema_components(unique, ref_template=_REF)
    refs = dict(zip(unique, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "zloth gateway", "version": "1",
                 "description": "Run several AI coding agents in parallel on one instruction."},
        "paths": paths,
        "components": {"schemas": components},
    }


def _operation(op: Op, refs: dict[type[msgspec.Struct], dict[str, Any]]) -> dict[str, Any]:
    status, kind = op.ok
    error = {"application/json": {"schema": refs[views.ErrorBody]}}
    responses: dict[str, Any] = {
        str(status): {"description": op.summary,
                      **({"content": {"application/json": {"schema": refs[kind]}}} if kind else {})}
    }
    for code, text in sorted(op.errors.items()):
        responses[str(code)] = {"description": text, "content": error}
    operation: dict[str, Any] = {
        "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_').replace('{', '')}"
                       .replace("}", ""),
        "summary": op.summary,
        "responses": responses,
    }
    if op.params:
        operation["parameters"] = [
            {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
             "description": p.description, "schema": p.schema}
            for p in op.params
        ]
    if op.request is not None:
        operation["requestBody"] = {
            "required": op.method == "post" and op.request is not bodies.CancelBody,
            "content": {"application/json": {"schema": refs[op.request]}},
        }
    return operation
