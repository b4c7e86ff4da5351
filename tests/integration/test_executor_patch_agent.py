"""The patch agent against a local fake of each provider, through the shared LLM client:
a reply's diff is applied with git apply; no diff, a diff that does not apply, or one
aimed at .git fails the run with the reason and leaves the work tree as it was."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.core.bus import Bus
from services.core.llm import LLMClient, LLMSettings, ProviderSettings
from services.core.natsd import NatsServer
from services.executor_runner.executors import AgentResult, ExecutorSpec, builtin_executors
from services.executor_runner.llm import EnvKeys
from services.executor_runner.patch_agent import extract_diff, run_patch_agent
from services.executor_runner.process import ProcessOutcome
from tests.support.fake_providers import FakeProvider, Fault, Script
from tests.support.gitrepo import git

README_DIFF = """\
diff --git a/README.md b/README.md
--- a/README.md
+++ b/README.md
@@ -1 +1,2 @@
 # demo
+Patched by the patch agent.
"""
REPLY = f"Adds a line to the README.\n\n```diff\n{README_DIFF}```\n"
KEYS = EnvKeys({"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k", "GEMINI_API_KEY": "k"})


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    connected = await Bus.connect(nats_server.url, name="patch-test")
    try:
        yield connected
    finally:
        await connected.close()


def workspace(tmp_path: Path) -> Path:
    repo = tmp_path / "ws"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "README.md").write_text("# demo\n")
    git("add", "README.md", cwd=repo)
    git("commit", "-q", "-m", "init", cwd=repo)
    return repo


async def patch(bus: Bus, fake: FakeProvider, provider: str, repo: Path
                ) -> tuple[str, str | None, str | None, list[str]]:
    outcome, result, lines = await patch_outcome(bus, fake, provider, repo)
    return outcome.outcome, outcome.reason, result.summary if result else None, lines


async def patch_outcome(bus: Bus, fake: FakeProvider, provider: str, repo: Path
                        ) -> tuple[ProcessOutcome, AgentResult | None, list[str]]:
    settings = LLMSettings(providers={
        name: ProviderSettings(base_url=fake.url, key_name=f"llm.{name}", read_timeout=5,
                               attempt_timeout=10) for name in ("openai", "anthropic", "google")
    }, max_attempts=1, cache_ttl_seconds=0, instance_id="test")
    spec = ExecutorSpec(name="patch", adapter="patch", command=["patch-agent"],
                        provider=provider, model="m1")  # type: ignore[arg-type]
    lines: list[str] = []

    async def log(text: str) -> None:
        lines.append(text)

    async with LLMClient(settings, bus, KEYS) as client:
        outcome, result = await run_patch_agent(client, spec, "Patch README.md", repo, log,
                                                asyncio.Event(), 30)
    return outcome, result, lines


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
async def test_a_diff_from_each_provider_is_applied(
    bus: Bus, tmp_path: Path, provider: str
) -> None:
    repo = workspace(tmp_path)
    with FakeProvider(script=Script(reply=REPLY)) as fake:
        state, reason, summary, lines = await patch(bus, fake, provider, repo)
        prompt = str(fake.model_requests()[-1].body)
    assert (state, reason) == ("succeeded", None), lines
    assert summary == "Adds a line to the README."
    assert (repo / "README.md").read_text() == "# demo\nPatched by the patch agent.\n"
    assert "README.md" in prompt and "Patch README.md" in prompt  # the context was sent
    assert lines[-1] == "[patch agent] applied to 1 file(s)"


@pytest.mark.parametrize(("reply", "expected"), [
    ("I would rather not.", "the model's reply holds no unified diff"),
    (REPLY.replace(" # demo", " # other"), "patch does not apply: error: patch failed"),
    ("```diff\ndiff --git a/.git/hooks/post-commit b/.git/hooks/post-commit\nnew file mode "
     "100755\n--- /dev/null\n+++ b/.git/hooks/post-commit\n@@ -0,0 +1 @@\n+touch /tmp/x\n```",
     "patch does not apply: error: invalid path '.git/hooks/post-commit'"),
])
async def test_a_bad_reply_fails_with_the_reason_and_changes_nothing(
    bus: Bus, tmp_path: Path, reply: str, expected: str
) -> None:
    repo = workspace(tmp_path)
    with FakeProvider(script=Script(reply=reply)) as fake:
        state, reason, _, _ = await patch(bus, fake, "anthropic", repo)
    assert state == "failed"
    assert reason is not None and reason.startswith(expected), reason
    assert git("status", "--porcelain", cwd=repo) == ""
    assert not (repo / ".git" / "hooks" / "post-commit").exists()


def test_extract_diff_reads_fenced_and_bare_diffs() -> None:
    assert extract_diff(REPLY) == (README_DIFF, "Adds a line to the README.")
    assert extract_diff("Here:\n" + README_DIFF) == (README_DIFF, "Here:")
    assert extract_diff("no diff") == (None, "no diff")


def test_the_builtin_patch_executor_names_a_provider_and_model() -> None:
    spec = builtin_executors()["patch"]
    assert (spec.adapter, spec.provider) == ("patch", "anthropic") and spec.model


async def test_a_provider_outage_fails_the_attempt_as_retryable_and_a_refusal_as_final(
    bus: Bus, tmp_path: Path
) -> None:
    """A 429 with Retry-After (or a 5xx) must not burn the run: the attempt fails fast
    and asks to be tried again, not sooner than the provider said; a 400 is final."""
    repo = workspace(tmp_path)
    with FakeProvider(fault=Fault(status=429, retry_after=7)) as fake:
        limited, _, _ = await patch_outcome(bus, fake, "anthropic", repo)
    with FakeProvider(fault=Fault(status=500)) as fake:
        down, _, _ = await patch_outcome(bus, fake, "openai", repo)
    with FakeProvider(fault=Fault(status=400)) as fake:
        refused, _, _ = await patch_outcome(bus, fake, "google", repo)
    assert limited.outcome == down.outcome == refused.outcome == "failed"
    assert limited.retry_after_seconds is not None and limited.retry_after_seconds >= 7
    assert down.retry_after_seconds is not None and down.retry_after_seconds >= 1
    assert refused.retry_after_seconds is None
    assert git("status", "--porcelain", cwd=repo) == ""
