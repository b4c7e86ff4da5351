"""The real coding-agent CLIs zloth drives: their pinned npm packages (installed by
scripts/install-agents into <repo>/.agents) and the command lines that run them headless.

Versions were checked against the CLIs' own `--help` and stream-json output; a change of
pin needs the tests in tests/e2e/test_executor_clis.py to pass against the new version."""

from __future__ import annotations

from pathlib import Path

from services.executor_runner.executors import ExecutorSpec

__all__ = ["AGENTS_BIN", "PINNED", "cli_executors", "resolve"]

# npm package → version; scripts/install-agents reads this table (keep it one per line)
PINNED = {
    "@anthropic-ai/claude-code": "2.1.332",
    "@openai/codex": "0.171.0",
    "@google/gemini-cli": "0.61.0",
}
AGENTS_BIN = Path(__file__).resolve().parents[2] / ".agents" / "node_modules" / ".bin"
_RESUME = "{resume}"


def resolve(program: str, agents_bin: Path | None) -> str:
    """The pinned install when there is one, else the bare name (found on PATH, if at all)."""
    candidate = (agents_bin or AGENTS_BIN) / program
    return str(candidate) if candidate.exists() else program


def cli_executors(agents_bin: Path | None = None) -> list[ExecutorSpec]:
    """claude, codex and gemini with safe headless flags; each gets only its provider's
    key and base URL from the runner's environment (nothing of zloth's)."""
    claude = ExecutorSpec(
        name="claude", adapter="claude", wrap_prompt=True, output="jsonl",
        version=PINNED["@anthropic-ai/claude-code"],
        # acceptEdits: file edits are allowed, shell commands are not (headless: denied)
        command=[resolve("claude", agents_bin), "-p", "--output-format", "stream-json",
                 "--verbose", "--permission-mode", "acceptEdits", _RESUME, "--",
                 "{instruction}"],
        resume_args=["--resume", "{session}"],
        env_allow=["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL",
                   "ANTHROPIC_MODEL"],
        env={"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
             "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1"},
        concurrency=4, timeout_seconds=1800, idle_timeout_seconds=300,
    )
    codex = ExecutorSpec(
        name="codex", adapter="codex", wrap_prompt=True, output="jsonl",
        version=PINNED["@openai/codex"],
        # the model must be in Codex's built-in catalog, or it offers no apply_patch tool;
        # the provider (base URL, key variable, retries) is written to its config.toml
        command=[resolve("codex", agents_bin), "exec", "--json", "-s", "workspace-write",
                 "--skip-git-repo-check", "-m", "gpt-5.5", _RESUME, "--", "{instruction}"],
        resume_args=["resume", "{session}"],
        env_allow=["OPENAI_API_KEY", "OPENAI_BASE_URL"],
        concurrency=4, timeout_seconds=1800, idle_timeout_seconds=300,
    )
    gemini = ExecutorSpec(
        name="gemini", adapter="gemini", wrap_prompt=True, output="jsonl",
        version=PINNED["@google/gemini-cli"],
        # a fixed model skips the "auto" router's extra classification call
        command=[resolve("gemini", agents_bin), "--output-format", "stream-json",
                 "--approval-mode", "auto_edit", "-m", "gemini-2.5-pro", _RESUME,
                 "-p", "{instruction}"],
        resume_args=["--resume", "{session}"],
        env_allow=["GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL"],
        concurrency=4, timeout_seconds=1800, idle_timeout_seconds=300,
    )
    return [claude, codex, gemini]
