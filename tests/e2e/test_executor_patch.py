"""The patch agent through the whole stack: the runner asks the (fake) provider through
its LLM client, applies the diff, and zloth commits it with the model's summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.core.natsd import NatsServer
from tests.support.fake_providers import FakeProvider, Fault, Script
from tests.support.gitrepo import make_origin
from tests.support.stack import inprocess_stack, submit, wait_for_executors, wait_run

DIFF = """\
diff --git a/PATCHED.md b/PATCHED.md
new file mode 100644
--- /dev/null
+++ b/PATCHED.md
@@ -0,0 +1 @@
+written by the patch agent
"""


async def test_patch_agent_run_is_committed_with_its_summary(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    reply = f"Adds PATCHED.md.\n```diff\n{DIFF}```\n"
    with FakeProvider(script=Script(reply=reply)) as fake:
        # read by the runner when it builds its LLM client (after the stack's own env)
        monkeypatch.setenv("ZLOTH_LLM_PROVIDERS", json.dumps(
            {"anthropic": {"base_url": fake.url, "key_name": "llm.anthropic"}}))
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        async with inprocess_stack(nats_server.url, tmp_path / "data") as client:
            await wait_for_executors(client, ("patch",))
            accepted = await submit(client, origin, ["patch"], "Add PATCHED.md")
            run = await wait_run(client, accepted["runs"][0]["id"],
                                 {"succeeded", "failed", "canceled"}, 60)
        headers = fake.model_requests()[0].headers
    assert run["state"] == "succeeded", run.get("reason")
    assert run["summary"] == "Adds PATCHED.md."
    assert "PATCHED.md" in run["diff"] and run["commit_sha"]
    assert headers.get("x-api-key") == "test-key"


async def test_a_provider_outage_retries_the_run_instead_of_burning_it(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider answers 503 at first: the attempt fails fast as retryable, the
    scheduler waits, and the next attempt (provider back) succeeds."""
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    reply = f"Adds PATCHED.md.\n```diff\n{DIFF}```\n"
    with FakeProvider(script=Script(reply=reply), fault=Fault(status=503)) as fake:
        monkeypatch.setenv("ZLOTH_LLM_PROVIDERS", json.dumps(
            {"anthropic": {"base_url": fake.url, "key_name": "llm.anthropic"}}))
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("ZLOTH_LLM_MAX_ATTEMPTS", "1")  # the client gives up at once
        async with inprocess_stack(nats_server.url, tmp_path / "data") as client:
            await wait_for_executors(client, ("patch",))
            accepted = await submit(client, origin, ["patch"], "Add PATCHED.md")
            run_id = accepted["runs"][0]["id"]
            retrying = await wait_run(client, run_id, {"retrying", "failed", "succeeded"}, 60)
            fake.fault = None  # the provider is back
            run = await wait_run(client, run_id, {"succeeded", "failed", "canceled"}, 60)
    assert retrying["state"] == "retrying", retrying.get("reason")
    assert "503" in str(retrying["reason"]) or "server" in str(retrying["reason"])
    assert (run["state"], run["attempt"]) == ("succeeded", 2), run.get("reason")
