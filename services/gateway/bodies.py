"""HTTP request bodies: strict Structs (an unknown or misspelt field is a 422 naming it)."""

from __future__ import annotations

from typing import Annotated

import msgspec

# Executor names become NATS subject tokens (`zloth.cmd.exec.<name>`): no dots, no wildcards.
ExecutorName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
# A branch, tag or sha; never an option (leading "-") nor a revision range.
GitRef = Annotated[
    str, msgspec.Meta(pattern=r"^(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/+-]{1,200}(?<![/.])$")
]
MAX_EXECUTORS = 8


class CreateRepo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class CreateTask(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    repo_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    title: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class CreateRuns(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One message of a task's conversation, fanned out to one run per executor."""

    instruction: Annotated[str, msgspec.Meta(min_length=1, max_length=200_000)]
    executors: Annotated[
        list[ExecutorName], msgspec.Meta(min_length=1, max_length=MAX_EXECUTORS)
    ]
    base_ref: GitRef | None = None
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=7 * 86_400)] | None = None


class CancelBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Optional body of a cancel."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] | None = None
