"""Executor specs, argv templates, output parsing, the agent environment, and the demo
agent run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from services.executor_runner import agent_env, executors, process
from services.executor_runner.agent_env import build_agent_env
from services.executor_runner.executors import (
    AgentResult,
    ExecutorConfigError,
    ExecutorSpec,
    build_argv,
    builtin_executors,
    load_executors,
    merge_result,
    parse_line,
)

WS, SUMMARY = Path("/ws"), Path("/tmp/summary.txt")


def test_exported_names() -> None:
    assert set(executors.__all__) == {
        "AgentResult", "ExecutorConfigError", "ExecutorSpec", "build_argv",
        "builtin_executors", "load_executors", "merge_result", "parse_line",
    }  # fmt: skip
    assert set(agent_env.__all__) == {"BASE_ALLOW", "build_agent_env"}
    assert set(process.__all__) == {
        "MARKER_VAR", "Limits", "OnLine", "ProcessOutcome", "kill_recorded",
        "reap_leftovers", "run_agent",
    }  # fmt: skip


# --------------------------------------------------------------------- build_argv


def test_build_argv_without_session_drops_resume_args() -> None:
    spec = builtin_executors()["demo-a"]
    argv = build_argv(spec, "fix the bug", WS, SUMMARY, None)
    assert argv[-2:] == ["--", "fix the bug"]
    assert "--resume" not in argv
    assert argv[argv.index("--summary-file") + 1] == str(SUMMARY)


def test_build_argv_with_session_puts_resume_args_at_the_slot() -> None:
    spec = builtin_executors()["demo-a"]
    argv = build_argv(spec, "go on", WS, SUMMARY, "sess-1")
    assert argv[-4:] == ["--resume", "sess-1", "--", "go on"]


def test_resume_args_are_appended_without_a_slot_and_session_tokens_dropped() -> None:
    spec = ExecutorSpec(
        name="cli",
        command=["cli", "-p", "{instruction}", "--cwd={workspace}", "--session={session}"],
        resume_args=["--resume", "{session}"],
    )
    assert build_argv(spec, "x", WS, SUMMARY, None) == ["cli", "-p", "x", "--cwd=/ws"]
    assert build_argv(spec, "x", WS, SUMMARY, "s9") == [
        "cli", "-p", "x", "--cwd=/ws", "--session=s9", "--resume", "s9",
    ]  # fmt: skip


def test_an_instruction_is_one_argument_and_never_re_expanded() -> None:
    spec = ExecutorSpec(name="cli", command=["cli", "{instruction}", "{workspace}"])
    tricky = "rm -rf {workspace}; echo $HOME `id` {session}"
    assert build_argv(spec, tricky, WS, SUMMARY, None) == ["cli", tricky, "/ws"]


# ----------------------------------------------------------------- load_executors


def test_builtin_executors() -> None:
    found = load_executors(None)
    assert set(found) == {"demo-a", "demo-b", "demo-c", "noop", "claude", "codex", "gemini",
                          "patch"}
    assert all(spec.output == "jsonl" for spec in found.values() if spec.adapter != "patch")
    assert {found[n].adapter for n in ("claude", "codex", "gemini")} == {
        "claude", "codex", "gemini"}
    assert all(found[n].version for n in ("claude", "codex", "gemini"))


def write(tmp_path: Path, specs: object) -> Path:
    path = tmp_path / "executors.json"
    path.write_text(json.dumps(specs))
    return path


def test_load_executors_from_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, [{"name": "claude", "command": ["claude", "-p", "{instruction}"]}])
    found = load_executors(path)
    assert list(found) == ["claude"]
    assert found["claude"].concurrency == 2
    assert found["claude"].output == "plain"


def test_an_unknown_field_is_rejected_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, [{"name": "claude", "comand": ["claude"]}])
    with pytest.raises(ExecutorConfigError, match="comand"):
        load_executors(path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "a.b", "command": ["x"]}, "name"),
        ({"name": "a", "command": []}, "command"),
        ({"name": "a", "command": ["x"], "concurrency": 0}, "concurrency"),
        ({"name": "a", "command": ["x {instructions}"]}, "instructions"),
        ({"name": "a", "command": ["x"], "env_allow": ["ZLOTH_NATS_URL"]}, "ZLOTH_NATS_URL"),
        ({"name": "a", "command": ["x"], "env": {"zloth_x": "1"}}, "zloth_x"),
    ],
)
def test_invalid_specs_fail_with_a_clear_message(
    tmp_path: Path, spec: dict[str, object], message: str
) -> None:
    with pytest.raises(ExecutorConfigError, match=message):
        load_executors(write(tmp_path, [spec]))


def test_duplicate_names_and_unreadable_files_fail(tmp_path: Path) -> None:
    spec = {"name": "a", "command": ["x"]}
    with pytest.raises(ExecutorConfigError, match="duplicate 'a'"):
        load_executors(write(tmp_path, [spec, spec]))
    with pytest.raises(ExecutorConfigError, match="cannot read"):
        load_executors(tmp_path / "missing.json")


# --------------------------------------------------------------------- parse_line

JSONL = ExecutorSpec(name="j", command=["x"], output="jsonl")


def test_parse_line_turns_events_into_readable_text() -> None:
    assert parse_line(JSONL, '{"type":"message","text":"hello"}') == ("event", "hello", None)
    tool = '{"type":"tool_use","tool":"write_file","path":"NOTES.md"}'
    assert parse_line(JSONL, tool) == ("event", "[tool] write_file NOTES.md", None)
    claude = {"type": "assistant", "message": {"content": [{"type": "text", "text": "hi"}]}}
    assert parse_line(JSONL, json.dumps(claude))[1] == "hi"
    kind, text, _ = parse_line(JSONL, '{"type":"turn.started"}')
    assert (kind, text) == ("event", '[turn.started] {"type":"turn.started"}')


def test_parse_line_extracts_the_result() -> None:
    line = json.dumps({
        "type": "result", "summary": "did it", "session_id": "s1",
        "usage": {"input_tokens": 10, "output_tokens": 5, "model": "x", "flag": True},
        "cost_usd": 0.25,
    })  # fmt: skip
    kind, text, result = parse_line(JSONL, line)
    assert (kind, text) == ("event", "[result] did it")
    assert result == AgentResult(
        summary="did it",
        session_id="s1",
        usage={"input_tokens": 10, "output_tokens": 5},
        cost_usd=0.25,
    )


def test_parse_line_reads_claude_style_results_and_early_session_ids() -> None:
    claude = {"type": "result", "result": "ok", "session_id": "c1", "total_cost_usd": 1}
    _, _, result = parse_line(JSONL, json.dumps(claude))
    assert result == AgentResult(summary="ok", session_id="c1", cost_usd=1.0)
    _, _, early = parse_line(JSONL, '{"type":"thread.started","thread_id":"t1"}')
    assert early == AgentResult(session_id="t1")
    assert merge_result(early, AgentResult(summary="done")) == AgentResult(
        summary="done", session_id="t1"
    )


@pytest.mark.parametrize("text", ["plain words", "{not json", "[1, 2]", '"str"', ""])
def test_anything_else_stays_stdout(text: str) -> None:
    assert parse_line(JSONL, text) == ("stdout", text, None)


def test_plain_executors_never_parse() -> None:
    plain = ExecutorSpec(name="p", command=["x"])
    line = '{"type":"result","summary":"s"}'
    assert parse_line(plain, line) == ("stdout", line, None)


def test_long_event_text_is_shortened() -> None:
    _, text, _ = parse_line(JSONL, json.dumps({"type": "message", "text": "y" * 10_000}))
    assert len(text) == 2000


# ---------------------------------------------------------------------- agent env

PARENT = {
    "PATH": "/opt/bin:/usr/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TMPDIR": "/var/tmp",
    "ZLOTH_CANARY_SECRET": "s3cret",
    "ZLOTH_NATS_URL": "nats://x",
    "GITHUB_TOKEN": "ghp_canary",
    "NATS_URL": "nats://y",
    "DATABASE_URL": "postgres://z",
    "OPENAI_API_KEY": "sk-openai",
    "ANTHROPIC_API_KEY": "sk-ant",
}


def test_agent_env_is_an_allow_list(tmp_path: Path) -> None:
    spec = ExecutorSpec(
        name="c", command=["x"], env_allow=["ANTHROPIC_API_KEY", "NOT_SET"], env={"MODE": "1"}
    )
    env = build_agent_env(spec, tmp_path / "home", PARENT)
    assert env == {
        "PATH": "/opt/bin:/usr/bin",
        "LANG": "C.UTF-8",
        "ANTHROPIC_API_KEY": "sk-ant",
        "MODE": "1",
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "home" / "tmp"),
    }
    assert (tmp_path / "home" / "tmp").is_dir()


def test_a_spec_cannot_override_the_isolated_home(tmp_path: Path) -> None:
    spec = ExecutorSpec(name="c", command=["x"], env={"HOME": "/root", "TMPDIR": "/tmp"})
    env = build_agent_env(spec, tmp_path, {})
    assert env["HOME"] == str(tmp_path)
    assert env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["PATH"]  # a default when the parent has none


def test_zloth_variables_can_never_be_allowed() -> None:
    with pytest.raises(ValueError, match="ZLOTH_CANARY_SECRET"):
        ExecutorSpec(name="c", command=["x"], env_allow=["ZLOTH_CANARY_SECRET"])
    with pytest.raises(msgspec.ValidationError, match="ZLOTH_"):
        msgspec.json.decode(
            b'{"name":"c","command":["x"],"env_allow":["ZLOTH_X"]}', type=ExecutorSpec
        )


# ---------------------------------------------------------------------- demo agent


def run_demo(spec_name: str, instruction: str, cwd: Path, session: str | None = None) -> list[str]:
    spec = builtin_executors()[spec_name]
    argv = build_argv(spec, instruction, cwd, cwd / ".summary", session)
    argv[argv.index("--summary-file") : argv.index("--summary-file")] = ["--sleep", "0"]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize(
    ("style", "readme", "path", "content"),
    [
        ("a", False, "NOTES.md", "- Add a title\n"),
        ("b", False, "docs/add-a-title.md", "# Add a title\n"),
        ("c", True, "README.md", "## Add a title"),
        ("c", False, "hello.py", "hello from demo agent c:"),
    ],
)
def test_demo_agent_edits_by_style(
    tmp_path: Path, style: str, readme: bool, path: str, content: str
) -> None:
    first, again = tmp_path / "first", tmp_path / "again"
    for work in (first, again):
        work.mkdir()
        if readme:
            (work / "README.md").write_text("# project\n")
    out = run_demo(f"demo-{style}", "Add a title", first)
    assert content in (first / path).read_text()
    spec = builtin_executors()[f"demo-{style}"]
    parsed = [parse_line(spec, line) for line in out]
    assert all(kind == "event" for kind, _, _ in parsed)
    result = parsed[-1][2]
    assert result is not None
    assert result.summary == (first / ".summary").read_text().strip()
    assert result.session_id is not None
    assert result.session_id.startswith(f"demo-{style}-")
    assert run_demo(f"demo-{style}", "Add a title", again)[-1] == out[-1]  # deterministic


def test_demo_agent_runs_as_a_module(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "services.executor_runner.demo_agent", "--sleep", "0", "hi"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert json.loads(done.stdout.splitlines()[-1])["type"] == "result"


def test_demo_agent_fails_on_request(tmp_path: Path) -> None:
    spec = builtin_executors()["demo-a"]
    argv = build_argv(spec, "please FAIL now", tmp_path, tmp_path / "s", None)
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 3
    assert "failed on purpose" in done.stderr


def test_noop_prints_one_result_line(tmp_path: Path) -> None:
    spec = builtin_executors()["noop"]
    argv = build_argv(spec, "anything", tmp_path, tmp_path / "s", None)
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    (line,) = done.stdout.splitlines()
    assert parse_line(spec, line) == ("event", "[result] noop", AgentResult(summary="noop"))
