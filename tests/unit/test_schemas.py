"""The wire contract: golden JSON per message (a changed field breaks this test on
purpose), subjects and deterministic msg ids, and tolerance of unknown fields."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from schemas.base import Message
from schemas.executions import CancelRequested, ExecuteRun, ExecutionFinished, ExecutionStarted
from schemas.hosts import host_token
from schemas.logs import LogChunk, LogLine
from schemas.runs import CancelRun, FileChange, RepoRef, RunResult, RunStateChanged, StartRun
from schemas.workspaces import (
    CommitWorkspace,
    PrepareWorkspace,
    WorkspaceCommitted,
    WorkspaceFailed,
    WorkspaceReady,
)

GOLDEN = Path(__file__).parent / "golden"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
REPO = RepoRef(repo_id="repo_1", url="/srv/git/app.git", default_branch="main")

SAMPLES: list[Message] = [
    StartRun(run_id="run_1", task_id="task_1", message_id="msg_1", repo=REPO, base_ref="main",
             instruction="fix the bug", executor="claude", accepted_at=T0),
    CancelRun(run_id="run_1", requested_at=T0),
    RunStateChanged(run_id="run_1", task_id="task_1", executor="claude", state="succeeded",
                    version=7, attempt=1, at=T0, queued_at=T0, finished_at=T0,
                    result=RunResult(summary="done", commit_sha="a" * 40,
                                     files_changed=[FileChange(path="a.py", added=1, removed=0)])),
    PrepareWorkspace(run_id="run_1", attempt=1, repo=REPO, branch="zloth/run_1"),
    WorkspaceReady(run_id="run_1", attempt=1, path="/w/run_1", branch="zloth/run_1",
                   base_sha="b" * 40, base_ref="main", host="h1"),
    CommitWorkspace(run_id="run_1", attempt=1, path="/w/run_1", branch="zloth/run_1",
                    base_sha="b" * 40, message="msg", host="h1"),
    WorkspaceCommitted(run_id="run_1", attempt=1, branch="zloth/run_1", base_sha="b" * 40,
                       commit_sha="c" * 40, diff="diff --git"),
    WorkspaceFailed(run_id="run_1", attempt=1, stage="prepare", reason="unknown ref"),
    ExecuteRun(run_id="run_1", task_id="task_1", attempt=1, executor="claude",
               workspace_path="/w/run_1", base_sha="b" * 40, instruction="fix the bug",
               host="h1"),
    ExecutionStarted(run_id="run_1", attempt=1, executor="claude", runner_id="r1", pid=42,
                     started_at=T0, timeout_seconds=1800.0),
    ExecutionFinished(run_id="run_1", attempt=1, executor="claude", outcome="succeeded",
                      exit_code=0, summary="done", finished_at=T0),
    CancelRequested(run_id="run_1"),
    LogChunk(run_id="run_1", attempt=1, seq=3,
             lines=[LogLine(ts=T0, stream="stdout", text="hello")]),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_message_matches_its_golden_json(message: Message) -> None:
    path = GOLDEN / f"{type(message).__name__}.json"
    encoded = msgspec.json.format(msgspec.json.encode(message), indent=2) + b"\n"
    if os.environ.get("ZLOTH_UPDATE_GOLDEN") == "1":
        path.write_bytes(encoded)
    assert path.read_bytes() == encoded, f"wire format of {type(message).__name__} changed"
    assert msgspec.json.decode(path.read_bytes(), type=type(message)) == message


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_old_consumers_skip_new_fields(message: Message) -> None:
    doc = msgspec.json.decode(msgspec.json.encode(message))
    doc["field_from_the_future"] = {"x": 1}
    assert msgspec.json.decode(msgspec.json.encode(doc), type=type(message)) == message


def test_subjects_carry_the_run_id_and_msg_ids_are_deterministic() -> None:
    execute = SAMPLES[8]
    assert isinstance(execute, ExecuteRun)
    assert execute.subject() == "zloth.cmd.exec.claude.h1.run_1"
    assert execute.msg_id() == "run:run_1:attempt:1:exec"
    prepare, commit = SAMPLES[3], SAMPLES[5]
    assert isinstance(prepare, PrepareWorkspace) and isinstance(commit, CommitWorkspace)
    assert prepare.subject() == "zloth.cmd.ws.prepare.run_1"  # any host takes it
    pinned = msgspec.structs.replace(prepare, host="h1")
    assert pinned.subject() == "zloth.cmd.ws.prepare.h1.run_1"
    assert pinned.msg_id() != prepare.msg_id()  # an unpinned re-issue is not a duplicate
    assert commit.subject() == "zloth.cmd.ws.commit.h1.run_1"
    state = SAMPLES[2]
    assert state.subject() == "zloth.evt.run.succeeded.task_1.run_1"
    assert state.msg_id() == "run:run_1:v7"
    chunk = SAMPLES[-1]
    assert chunk.subject() == "zloth.logs.run_1"
    assert chunk.msg_id() == "run:run_1:attempt:1:d1:log:3"
    for message in SAMPLES:
        assert message.subject().startswith("zloth.")
        assert message.msg_id() == type(message)(**msgspec.structs.asdict(message)).msg_id()


def test_host_names_become_single_subject_tokens() -> None:
    assert host_token("ip-10-0-0-7.eu-west-1.compute.internal") == (
        "ip-10-0-0-7-eu-west-1-compute-internal")
    assert host_token("a b*c>") == "a-b-c"
    assert host_token("....") == "host"
    assert len(host_token("x" * 300)) == 64
    assert host_token() == host_token(socket.gethostname())
