"""The ExecuteRun handler: one agent attempt, from spawn to the published outcome."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import msgspec

from schemas.base import utcnow
from schemas.executions import ExecuteRun, ExecutionFinished, ExecutionStarted
from schemas.logs import LogChunk, LogStreamName
from schemas.streams import CANCEL_BUCKET
from services.core import metrics, tracing
from services.core.bus import Bus, Delivery
from services.core.git import run_git
from services.core.llm import LLMClient
from services.core.store import Store
from services.core.telemetry import get_logger
from services.executor_runner.adapters import Adapter, RunPaths, make_adapter
from services.executor_runner.agent_env import build_agent_env
from services.executor_runner.executors import (
    AgentResult,
    ExecutorSpec,
    build_argv,
    merge_result,
)
from services.executor_runner.logbatch import LogBatcher
from services.executor_runner.patch_agent import run_patch_agent
from services.executor_runner.process import Limits, ProcessOutcome, kill_recorded, run_agent
from services.executor_runner.sessions import restore_state, save_state, state_dir
from services.executor_runner.settings import RunnerSettings
from services.executor_runner.versions import Installed

MAX_SUMMARY_BYTES = 64 * 1024


class Runner:
    def __init__(
        self, bus: Bus, store: Store, settings: RunnerSettings,
        executors: Mapping[str, ExecutorSpec], runner_id: str,
    ) -> None:
        self.bus = bus
        self.store = store
        self.settings = settings
        self.executors = executors
        self.runner_id = runner_id
        self.cancels: dict[str, asyncio.Event] = {}
        self.active: Counter[str] = Counter()  # executor → agents running now (status)
        self.installed: dict[str, Installed] = {}  # executor → (installed, version)
        self.llm: LLMClient | None = None  # for the patch agent
        self.log = get_logger(service="executor-runner")

    async def on_execute(self, cmd: ExecuteRun, delivery: Delivery) -> None:
        done = await self._finished(cmd.run_id, cmd.attempt)
        if done is not None:  # this attempt already ran: say so again, do not run it twice
            await self.bus.publish(done)
            return
        spec = self.executors[cmd.executor]
        cancel = self.cancels.setdefault(cmd.run_id, asyncio.Event())
        try:
            if await self.bus.kv_get(CANCEL_BUCKET.name, cmd.run_id) is not None:
                cancel.set()
            outcome, result, summary = await self._execute(cmd, spec, delivery, cancel)
        finally:
            self.cancels.pop(cmd.run_id, None)
        finished = ExecutionFinished(
            run_id=cmd.run_id, attempt=cmd.attempt, executor=cmd.executor,
            outcome=outcome.outcome, exit_code=outcome.exit_code, reason=outcome.reason,
            summary=summary or (result.summary if result else None),
            session_id=result.session_id if result else None,
            usage=result.usage if result else {},
            cost_usd=result.cost_usd if result else None,
            finished_at=utcnow(),
            retryable=outcome.retry_after_seconds is not None,
            retry_after_seconds=outcome.retry_after_seconds,
        )
        await self.store.execute(
            "INSERT INTO executions (run_id, attempt, finished) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (cmd.run_id, cmd.attempt, msgspec.json.encode(finished)),
        )
        await self.bus.publish(finished)
        self.log.info("execution_finished", run_id=cmd.run_id, outcome=outcome.outcome,
                      reason=outcome.reason)

    async def _execute(
        self, cmd: ExecuteRun, spec: ExecutorSpec, delivery: Delivery, cancel: asyncio.Event
    ) -> tuple[ProcessOutcome, AgentResult | None, str | None]:
        run_key = f"{cmd.run_id}-{cmd.attempt}"
        workspace = Path(cmd.workspace_path)
        # A previous delivery of this attempt may have died with its runner: kill what it
        # left on this host and start again from the base commit.
        await asyncio.to_thread(kill_recorded, self.settings.pidfile_dir, run_key)
        if delivery.num_delivered > 1:
            await reset_workspace(workspace, cmd.base_sha)
        summary_path = workspace / self.settings.summary_file
        home = await asyncio.to_thread(_fresh_home, self.settings.homes_dir / run_key)
        paths = RunPaths(workspace=workspace, home=home, summary_file=summary_path)
        adapter = make_adapter(spec)
        sessions = state_dir(self.settings.sessions_dir, cmd.task_id, cmd.executor)
        env = build_agent_env(spec, home, os.environ)
        await asyncio.to_thread(self._prepare, adapter, paths, sessions, env,
                                cmd.resume_session)
        instruction = adapter.prompt(cmd.instruction, paths)
        argv = build_argv(spec, instruction, workspace, summary_path, cmd.resume_session)
        result: AgentResult | None = None
        limits = self._limits(cmd, spec)

        async def emit(chunk: LogChunk) -> None:
            await self.bus.publish(chunk)

        async with LogBatcher(cmd.run_id, cmd.attempt, delivery.num_delivered, emit,
                              max_run_bytes=self.settings.max_log_bytes) as logs:

            async def on_line(stream: LogStreamName, text: str) -> None:
                nonlocal result
                kind: LogStreamName = stream
                extracted = None
                if stream == "stdout":
                    kind, text, extracted = adapter.parse(text)
                else:
                    adapter.observe_stderr(text)
                await logs.add(kind, text)
                if extracted is not None:
                    result = merge_result(result, extracted)

            await self.bus.publish(ExecutionStarted(
                run_id=cmd.run_id, attempt=cmd.attempt, executor=cmd.executor,
                runner_id=self.runner_id, pid=0, started_at=utcnow(),
                delivery=delivery.num_delivered, timeout_seconds=limits.wall_seconds,
            ))
            metrics.agent_runs_active.labels(cmd.executor).inc()
            self.active[cmd.executor] += 1
            try:
                with tracing.span("agent run", None, {"zloth.executor": cmd.executor,
                                                      "zloth.run_id": cmd.run_id}):
                    if spec.adapter == "patch":
                        outcome, result = await self._patch(cmd, spec, workspace, logs,
                                                            cancel)
                    else:
                        outcome = await run_agent(
                            argv, workspace, env, on_line, limits, cancel,
                            self.settings.pidfile_dir, run_key,
                        )
            finally:
                metrics.agent_runs_active.labels(cmd.executor).dec()
                self.active[cmd.executor] -= 1
            # check may read the agent's files (Codex's rollout): off the event loop
            outcome = await asyncio.to_thread(adapter.check, outcome, result, paths)
            if outcome.outcome != "succeeded":
                await logs.add("system", f"agent {outcome.outcome}: {outcome.reason}")
        summary = await asyncio.to_thread(_take_summary, summary_path)
        if result is not None and result.session_id and adapter.state_paths:
            await asyncio.to_thread(save_state, home, sessions, adapter.state_paths)
        await asyncio.to_thread(shutil.rmtree, home, True)
        return outcome, result, summary

    async def _patch(
        self, cmd: ExecuteRun, spec: ExecutorSpec, workspace: Path, logs: LogBatcher,
        cancel: asyncio.Event,
    ) -> tuple[ProcessOutcome, AgentResult | None]:
        if self.llm is None:
            raise RuntimeError("patch executor without an LLM client")  # build() makes one

        async def log(text: str) -> None:
            await logs.add("event", text)

        timeout = cmd.timeout_seconds or spec.timeout_seconds
        return await run_patch_agent(self.llm, spec, cmd.instruction, workspace, log, cancel,
                                     timeout)

    def _prepare(self, adapter: Adapter, paths: RunPaths, sessions: Path,
                 env: dict[str, str], session: str | None) -> None:
        """The agent's HOME: its previous session's state when it resumes, its settings."""
        if session and adapter.state_paths:
            restore_state(sessions, paths.home, adapter.state_paths)
        adapter.prepare(paths, env, session)

    def _limits(self, cmd: ExecuteRun, spec: ExecutorSpec) -> Limits:
        return Limits(
            wall_seconds=cmd.timeout_seconds or spec.timeout_seconds,
            idle_seconds=spec.idle_timeout_seconds,
            memory_bytes=self.settings.agent_memory_bytes,
            cpu_seconds=self.settings.agent_cpu_seconds,
            file_size_bytes=self.settings.agent_file_size_bytes,
            open_files=self.settings.agent_open_files,
        )

    async def _finished(self, run_id: str, attempt: int) -> ExecutionFinished | None:
        row = await self.store.fetchone(
            "SELECT finished FROM executions WHERE run_id = ? AND attempt = ?", (run_id, attempt)
        )
        return None if row is None else msgspec.json.decode(row["finished"],
                                                              type=ExecutionFinished)


async def reset_workspace(workspace: Path, base_sha: str) -> None:
    """Back to the base commit, every file the agent touched gone (hooks never run)."""
    await run_git(["checkout", "--quiet", "--force", base_sha, "--", "."], cwd=workspace)
    await run_git(["reset", "--quiet", "--hard", base_sha], cwd=workspace)
    await run_git(["clean", "-ffdxq"], cwd=workspace)


def _fresh_home(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    return path


def _take_summary(path: Path) -> str | None:
    """Read the agent's summary file and remove it, so it is never committed."""
    try:
        if not path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
            return None
        with path.open("rb") as fh:
            text = fh.read(MAX_SUMMARY_BYTES).decode("utf-8", errors="replace").strip()
        path.unlink()
    except OSError:
        return None
    return text or None
