"""Adapters: how zloth drives each kind of agent (settings, prompt, event parsing, result
judgement) around the shared process layer. Explicit registry, no import-time magic."""

from __future__ import annotations

from services.executor_runner.adapters.base import Adapter, RunPaths, wrap_prompt
from services.executor_runner.adapters.claude import ClaudeAdapter
from services.executor_runner.adapters.codex import CodexAdapter
from services.executor_runner.adapters.gemini import GeminiAdapter
from services.executor_runner.executors import ExecutorSpec

__all__ = ["ADAPTERS", "Adapter", "RunPaths", "make_adapter", "wrap_prompt"]

ADAPTERS: dict[str, type[Adapter]] = {
    "generic": Adapter,
    "claude": ClaudeAdapter,
    "codex": CodexAdapter,
    "gemini": GeminiAdapter,
    "patch": Adapter,  # no process: the generic hooks judge its outcome
}


def make_adapter(spec: ExecutorSpec) -> Adapter:
    """A fresh adapter for one run of `spec` (parsers keep per-run state)."""
    return ADAPTERS[spec.adapter](spec)
