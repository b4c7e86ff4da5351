"""Helpers for tests that drive the real agent CLIs: whether they are installed, an
executors file pointing each CLI at a fake provider, and the agent processes alive."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec

from services.executor_runner.clis import AGENTS_BIN, cli_executors
from services.executor_runner.executors import ExecutorSpec, builtin_executors

CLIS = ("claude", "codex", "gemini")
# the variable each CLI reads its provider's base URL from (codex: via our config.toml)
BASE_URL_VAR = {"claude": "ANTHROPIC_BASE_URL", "codex": "OPENAI_BASE_URL",
                "gemini": "GOOGLE_GEMINI_BASE_URL"}
KEY_VAR = {"claude": "ANTHROPIC_API_KEY", "codex": "OPENAI_API_KEY", "gemini": "GEMINI_API_KEY"}
URL_SUFFIX = {"claude": "", "codex": "/v1", "gemini": ""}


def missing_clis() -> list[str]:
    return [name for name in CLIS if not (AGENTS_BIN / name).exists()]


def cli_spec(cli: str, base_url: str, name: str | None = None, **overrides: object
             ) -> ExecutorSpec:
    """The built-in spec of `cli` renamed, talking to `base_url` with a test key."""
    spec = {s.name: s for s in cli_executors()}[cli]
    env = {**spec.env, BASE_URL_VAR[cli]: base_url + URL_SUFFIX[cli], KEY_VAR[cli]: "test-key"}
    return msgspec.structs.replace(spec, name=name or cli, env=env, **overrides)


def write_executors(path: Path, specs: list[ExecutorSpec]) -> Path:
    """An executors file: `specs` plus the demo executors (the stack harness waits for them)."""
    demos = [spec for name, spec in builtin_executors().items() if name.startswith("demo-")]
    path.write_bytes(msgspec.json.encode([*demos, *specs]))
    return path


def agent_pids(homes: Path) -> dict[int, bytes]:
    """Every live process whose HOME is under `homes` (each agent and whatever it
    started inherit their run's HOME) → its environment block."""
    marker = f"HOME={homes}".encode()
    found: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in "ZX" and any(v.startswith(marker) for v in environ.split(b"\0")):
            found[int(entry.name)] = environ
    return found


async def wait_no_agents(homes: Path, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while agent_pids(homes):
            await asyncio.sleep(0.1)
