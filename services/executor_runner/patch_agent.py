"""The patch agent: no CLI and no subprocess of its own. It asks a provider (OpenAI,
Anthropic or Google, through the shared LLM client: rate limits, retries, breaker) for a
unified diff of the change, then applies it with zloth's hardened git: `git apply --check`
first, then `git apply`. A reply without a diff, or a diff that does not apply, fails the
run with the reason. git apply refuses paths outside the work tree and inside .git."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from schemas.executions import ExecutionOutcome
from services.core.git import GitError, run_git
from services.core.llm import LLMClient, LLMError, Request
from services.executor_runner.executors import AgentResult, ExecutorSpec
from services.executor_runner.process import ProcessOutcome

__all__ = ["SYSTEM", "extract_diff", "run_patch_agent"]

SYSTEM = (
    "You are a careful software engineer working on a git repository. Answer with one "
    "short paragraph summarising the change, then the change itself as a unified diff "
    "(git format: `diff --git a/PATH b/PATH`, paths relative to the repository root) in "
    "one ```diff fenced block. Nothing after the block."
)
_FENCE = re.compile(r"```(?:diff|patch)?[ \t]*\n(.*?)```", re.DOTALL)
_MAX_FILES_LISTED = 2000
_MAX_CONTEXT_BYTES = 120_000
_MAX_FILE_BYTES = 20_000
Log = Callable[[str], Awaitable[None]]


def extract_diff(text: str) -> tuple[str | None, str]:
    """(the diff, the prose around it): a fenced block holding a diff, else the reply
    itself from its first `diff --git` / `--- ` line."""
    for block in _FENCE.findall(text):
        if "\n+++ " in block or block.startswith(("diff --git", "--- ")):
            prose = _FENCE.sub("", text).strip()
            return block if block.endswith("\n") else block + "\n", prose
    match = re.search(r"^(diff --git |--- )", text, re.MULTILINE)
    if match is None:
        return None, text.strip()
    diff = text[match.start():]
    return (diff if diff.endswith("\n") else diff + "\n"), text[: match.start()].strip()


async def _context(workspace: Path, instruction: str) -> str:
    """The file list, then the files the instruction names, then small files, up to a
    budget: what the model needs to write a diff that applies."""
    listed = await run_git(["ls-files", "-z"], cwd=workspace, max_stdout=4 << 20)
    files = [f for f in listed.stdout.split("\0") if f][:_MAX_FILES_LISTED]
    named = [f for f in files if f in instruction or Path(f).name in instruction]
    parts = ["Files in the repository:\n" + "\n".join(files)]
    budget = _MAX_CONTEXT_BYTES
    for name in [*named, *(f for f in files if f not in named)]:
        path = workspace / name
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_FILE_BYTES:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        if b"\0" in data or len(data) > budget:
            continue
        budget -= len(data)
        parts.append(f"--- {name}\n{data.decode('utf-8', errors='replace')}")
    return "\n\n".join(parts)


async def run_patch_agent(
    client: LLMClient, spec: ExecutorSpec, instruction: str, workspace: Path, log: Log,
    cancel: asyncio.Event, timeout: float,  # noqa: ASYNC109  the run's own wall clock
) -> tuple[ProcessOutcome, AgentResult | None]:
    provider, model = spec.provider or "anthropic", spec.model or "claude-sonnet-4-5"
    context = await _context(workspace, instruction)
    await log(f"[patch agent] asking {provider} {model} for a diff")
    request = Request(provider=provider, model=model, system=SYSTEM, max_tokens=16384,
                      prompt=f"{context}\n\nTask:\n{instruction}", stream=True, cache=False,
                      deadline_seconds=timeout)
    asking = asyncio.create_task(client.complete(request))
    canceled = asyncio.create_task(cancel.wait())
    try:
        await asyncio.wait({asking, canceled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        canceled.cancel()
        if not asking.done():
            asking.cancel()
        await asyncio.gather(asking, canceled, return_exceptions=True)
    if cancel.is_set() and asking.cancelled():
        return _ended("canceled", "canceled"), None
    try:
        response = asking.result()
    except LLMError as exc:
        # fails fast (open breaker, rate limit, outage): the run is tried again later,
        # not burned; a refusal (bad request, auth) is final
        retry = None if exc.non_retryable else max(exc.next_retry_delay, 1.0)
        return _ended("failed", f"{provider} call failed: {exc}", retry), None
    usage = {"input_tokens": response.usage.input, "output_tokens": response.usage.output}
    diff, prose = extract_diff(response.text)
    await log(f"[patch agent] reply: {len(response.text)} characters")
    if diff is None:
        return _ended("failed", "the model's reply holds no unified diff"), AgentResult(
            usage=usage)
    result = AgentResult(summary=prose or None, usage=usage)
    try:
        await run_git(["apply", "--check", "--whitespace=nowarn", "-"], cwd=workspace,
                      input=diff.encode(), timeout=60)
        await run_git(["apply", "--whitespace=nowarn", "-"], cwd=workspace,
                      input=diff.encode(), timeout=60)
    except GitError as exc:
        reason = " ".join(exc.stderr.split())[:400] or f"git apply exit code {exc.code}"
        await log(f"[patch agent] patch does not apply: {reason}")
        return _ended("failed", f"patch does not apply: {reason}"), result
    files = sum(1 for line in diff.splitlines() if line.startswith("+++ "))
    await log(f"[patch agent] applied to {files} file(s)")
    return _ended("succeeded", None), result


def _ended(outcome: ExecutionOutcome, reason: str | None, retry_after: float | None = None
           ) -> ProcessOutcome:
    return ProcessOutcome(outcome=outcome, exit_code=None, reason=reason, output_bytes=0, pid=0,
                          retry_after_seconds=retry_after)
