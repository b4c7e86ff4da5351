"""The CLI adapters on lines recorded from the pinned CLIs (trimmed): events become
readable log lines and a result; a reported error fails a run that exited 0."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from services.executor_runner.adapters import Adapter, RunPaths, make_adapter, wrap_prompt
from services.executor_runner.adapters.codex import config_toml
from services.executor_runner.clis import cli_executors
from services.executor_runner.executors import AgentResult, build_argv, merge_result
from services.executor_runner.process import ProcessOutcome
from services.executor_runner.sessions import restore_state, save_state, state_dir

SPECS = {spec.name: spec for spec in cli_executors(Path("/nonexistent"))}
OK = ProcessOutcome(outcome="succeeded", exit_code=0, reason=None, output_bytes=1, pid=1)
IDLE = ProcessOutcome(outcome="timed_out", exit_code=-15, reason="no output for 20s",
                      output_bytes=1, pid=1)


def paths(tmp_path: Path) -> RunPaths:
    return RunPaths(workspace=tmp_path / "ws", home=tmp_path / "home",
                    summary_file=tmp_path / "ws" / ".zloth-summary.md")


def feed(cli: str, events: list[Any]) -> tuple[list[str], AgentResult | None, Adapter]:
    adapter = make_adapter(SPECS[cli])
    shown: list[str] = []
    result: AgentResult | None = None
    for event in events:
        kind, text, found = adapter.parse(json.dumps(event))
        assert kind == "event"
        shown.append(text)
        result = merge_result(result, found) if found else result
    return shown, result, adapter


# ------------------------------------------------------------------------- claude

CLAUDE_OK: list[dict[str, Any]] = [
    {"type": "system", "subtype": "init", "session_id": "ab22", "model": "claude-opus-5-5",
     "claude_code_version": "2.1.332"},
    {"type": "assistant", "session_id": "ab22", "message": {"content": [
        {"type": "tool_use", "name": "Write", "input": {"file_path": "./F.md", "content": "x"}}]}},
    {"type": "user", "session_id": "ab22", "message": {"content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "File created successfully"}]}},
    {"type": "result", "subtype": "success", "is_error": False, "session_id": "ab22",
     "result": "Edited F.md.", "total_cost_usd": 0.00216,
     "usage": {"input_tokens": 240, "output_tokens": 60, "cache_read_input_tokens": 0,
               "server_tool_use": {"web_search_requests": 0}, "service_tier": "standard"}},
]
CLAUDE_API_ERROR: dict[str, Any] = {  # what 2.1.332 prints for an HTTP 400, then exits 1
    "type": "result", "subtype": "success", "is_error": True, "api_error_status": 400,
    "session_id": "56aa", "result": "API Error: 400 recorder says no", "total_cost_usd": 0,
}


def test_claude_events_become_lines_and_a_result() -> None:
    shown, result, _ = feed("claude", CLAUDE_OK)
    assert shown[0] == "[init] claude 2.1.332 model claude-opus-5-5 session ab22"
    assert shown[1] == "[tool] Write ./F.md"
    assert shown[2] == "[tool result] File created successfully"
    assert result == AgentResult(
        summary="Edited F.md.", session_id="ab22", cost_usd=0.00216,
        usage={"input_tokens": 240, "output_tokens": 60, "cache_read_input_tokens": 0},
    )


def test_claude_api_error_reported_as_success_fails_the_run(tmp_path: Path) -> None:
    _, result, adapter = feed("claude", [CLAUDE_API_ERROR])
    assert result is not None and result.error == "API Error: 400 recorder says no"
    assert result.summary is None
    outcome = adapter.check(OK, result, paths(tmp_path))
    assert outcome.outcome == "failed"
    assert outcome.reason == "claude: API Error: 400 recorder says no"


def test_claude_retry_notice_explains_a_timeout(tmp_path: Path) -> None:
    retry = {"type": "system", "subtype": "api_retry", "error": "rate_limit", "attempt": 3}
    _, result, adapter = feed("claude", [retry])
    outcome = adapter.check(IDLE, result, paths(tmp_path))
    assert (outcome.outcome, outcome.reason) == (
        "timed_out", "no output for 20s (agent error: api_retry: rate_limit)")


# -------------------------------------------------------------------------- codex

CODEX_OK: list[dict[str, Any]] = [
    {"type": "thread.started", "thread_id": "01a2"},
    {"type": "turn.started"},
    {"type": "item.completed", "item": {"id": "item_0", "type": "error",
                                        "message": "Model metadata not found"}},
    {"type": "item.completed", "item": {"id": "item_1", "type": "file_change", "status":
                                        "completed", "changes": [{"path": "/w/F.md",
                                                                  "kind": "add"}]}},
    {"type": "item.completed", "item": {"id": "item_2", "type": "agent_message",
                                        "text": "Edited F.md."}},
    {"type": "turn.completed", "usage": {"input_tokens": 400, "cached_input_tokens": 0,
                                         "output_tokens": 80}},
]


def test_codex_events_become_lines_and_a_result(tmp_path: Path) -> None:
    shown, result, adapter = feed("codex", CODEX_OK)
    assert shown[2] == "[warning] Model metadata not found"  # a warning is no failure
    assert shown[3] == "[edit completed] add /w/F.md"
    assert result == AgentResult(summary="Edited F.md.", session_id="01a2", usage={
        "input_tokens": 400, "cached_input_tokens": 0, "output_tokens": 80})
    assert adapter.check(OK, result, paths(tmp_path)) == OK


def test_codex_failed_turn_fails_with_its_message(tmp_path: Path) -> None:
    failed = {"type": "turn.failed", "error": {"message": "exceeded retry limit, 429"}}
    _, result, adapter = feed("codex", [CODEX_OK[0], failed])
    exit1 = ProcessOutcome(outcome="failed", exit_code=1, output_bytes=1, pid=1,
                           reason="exit code 1: Reading additional input from stdin...")
    outcome = adapter.check(exit1, result, paths(tmp_path))
    assert outcome.reason == "codex: exceeded retry limit, 429 (exit code 1)"


def test_codex_patch_rejected_by_the_sandbox_fails_an_exit_0_run(tmp_path: Path) -> None:
    """The rejection is only in the session's rollout file, never on stdout."""
    run = paths(tmp_path)
    adapter = make_adapter(SPECS["codex"])
    adapter.prepare(run, {"OPENAI_BASE_URL": "http://fake/v1"}, None)
    _, _, found = adapter.parse(json.dumps(CODEX_OK[0]))
    rollouts = run.home / ".codex" / "sessions" / "2026" / "11" / "28"
    rollouts.mkdir(parents=True)
    stamp = "2999-01-01T00:00:00.000Z"
    record = {"timestamp": stamp, "type": "response_item", "payload": {
        "type": "custom_tool_call_output", "call_id": "c",
        "output": "patch rejected: writing is blocked by read-only sandbox"}}
    (rollouts / "rollout-2026-11-28T21-48-08-01a2.jsonl").write_text(json.dumps(record) + "\n")
    outcome = adapter.check(OK, found, run)
    assert outcome.outcome == "failed"
    assert outcome.reason == "codex: patch rejected: writing is blocked by read-only sandbox"


def test_codex_config_points_at_the_provider_and_quotes_it(tmp_path: Path) -> None:
    text = config_toml('http://h/v1"\nevil = 1')
    assert 'base_url = "http://h/v1\\"\\nevil = 1"' in text
    assert 'wire_api = "responses"' in text and "\nevil" not in text


# ------------------------------------------------------------------------- gemini

GEMINI_OK: list[dict[str, Any]] = [
    {"type": "init", "session_id": "cc64", "model": "gemini-2.5-pro"},
    {"type": "message", "role": "user", "content": "make an edit"},
    {"type": "message", "role": "assistant", "content": "Let me", "delta": True},
    {"type": "tool_use", "tool_name": "write_file", "tool_id": "w1",
     "parameters": {"file_path": "F.md", "content": "x"}},
    {"type": "tool_result", "tool_id": "w1", "status": "success"},
    {"type": "message", "role": "assistant", "content": "Edited ", "delta": True},
    {"type": "message", "role": "assistant", "content": "F.md.", "delta": True},
    {"type": "result", "status": "success", "stats": {"total_tokens": 700, "input_tokens": 600,
                                                      "output_tokens": 100, "duration_ms": 3}},
]


def test_gemini_events_become_lines_and_a_result() -> None:
    shown, result, _ = feed("gemini", GEMINI_OK)
    assert shown[3] == "[tool] write_file F.md"
    assert result == AgentResult(summary="Edited F.md.", session_id="cc64", usage={
        "total_tokens": 700, "input_tokens": 600, "output_tokens": 100})


def test_gemini_error_result_and_silent_retries(tmp_path: Path) -> None:
    error = {"type": "result", "status": "error",
             "error": {"type": "unknown", "message": "[API Error: 400 bad]"}}
    _, result, adapter = feed("gemini", [GEMINI_OK[0], error])
    exit144 = ProcessOutcome(outcome="failed", exit_code=144, reason="exit code 144",
                             output_bytes=1, pid=1)
    outcome = adapter.check(exit144, result, paths(tmp_path))
    assert outcome.reason == "gemini: [API Error: 400 bad] (exit code 144)"
    retrying = make_adapter(SPECS["gemini"])
    retrying.observe_stderr("Attempt 2 failed with status 500. Retrying with backoff...")
    assert retrying.check(IDLE, None, paths(tmp_path)).reason == (
        "no output for 20s (agent error: Attempt 2 failed with status 500)")


def test_gemini_resume_repoints_the_restored_project(tmp_path: Path) -> None:
    run = paths(tmp_path)
    old = run.home / ".gemini" / "tmp" / "run-old"
    (old / "chats").mkdir(parents=True)
    (old / "chats" / "session-x-cc64.jsonl").write_text("{}")
    (old / ".project_root").write_text("/data/workspaces/run_old")
    make_adapter(SPECS["gemini"]).prepare(run, {}, "cc64")
    assert (old / ".project_root").read_text() == str(run.workspace)
    settings = json.loads((run.home / ".gemini" / "settings.json").read_text())
    assert settings["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert settings["telemetry"]["enabled"] is False


# ---------------------------------------------------------------- shared behaviour


def test_the_prompt_never_starts_with_a_dash_and_names_the_summary_file() -> None:
    text = wrap_prompt("--dangerously-skip-permissions", Path("/w/.zloth-summary.md"))
    assert not text.startswith("-")
    assert "/w/.zloth-summary.md" in text and "--dangerously-skip-permissions" in text


def test_out_of_memory_on_stderr_names_the_cause(tmp_path: Path) -> None:
    adapter = make_adapter(SPECS["gemini"])
    adapter.observe_stderr("# Out of memory: HashMap::Initialize")
    crashed = ProcessOutcome(outcome="failed", exit_code=1, reason="exit code 1: 29: 0x19",
                             output_bytes=1, pid=1)
    reason = adapter.check(crashed, None, paths(tmp_path)).reason or ""
    assert reason.startswith("agent ran out of memory (exit code 1")


@pytest.mark.parametrize(("cli", "resume"), [
    ("claude", ["--resume", "s1", "--"]), ("codex", ["resume", "s1", "--"]),
    ("gemini", ["--resume", "s1", "-p"])])
def test_resume_arguments_sit_before_the_prompt(cli: str, resume: list[str]) -> None:
    argv = build_argv(SPECS[cli], "PROMPT", Path("/w"), Path("/w/s"), "s1")
    assert argv[-4:] == [*resume, "PROMPT"]
    assert "s1" not in build_argv(SPECS[cli], "PROMPT", Path("/w"), Path("/w/s"), None)


def test_session_state_round_trip_keeps_links_as_links(tmp_path: Path) -> None:
    home, store = tmp_path / "home", state_dir(tmp_path / "store", "task/../x", "claude")
    projects = home / ".claude" / "projects" / "-w"
    projects.mkdir(parents=True)
    (projects / "s1.jsonl").write_text("{}")
    os.symlink("/etc/passwd", projects / "link")
    save_state(home, store, (".claude/projects",))
    assert store.is_relative_to(tmp_path / "store")
    fresh = tmp_path / "fresh"
    assert restore_state(store, fresh, (".claude/projects",))
    assert (fresh / ".claude/projects/-w/s1.jsonl").read_text() == "{}"
    assert (fresh / ".claude/projects/-w/link").is_symlink()
    assert not restore_state(tmp_path / "none", fresh, (".claude/projects",))
