"""The environment an agent gets: built from an allow-list only (never a copy of ours
minus secrets), with its own HOME and TMPDIR; nothing ZLOTH_* ever reaches it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from services.executor_runner.executors import ExecutorSpec

__all__ = ["BASE_ALLOW", "build_agent_env"]

BASE_ALLOW = ("PATH", "LANG", "LC_ALL", "TZ", "TERM")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_NEVER = "ZLOTH_"  # zloth's own settings and secrets: not even an executor may ask for them


def build_agent_env(
    spec: ExecutorSpec, home: Path, parent_env: Mapping[str, str]
) -> dict[str, str]:
    """BASE_ALLOW and `spec.env_allow` copied from `parent_env`, then `spec.env`, then
    HOME=`home` and TMPDIR=`home`/tmp (created), which the spec cannot override."""
    env = {name: parent_env[name] for name in BASE_ALLOW if name in parent_env}
    env.setdefault("PATH", _DEFAULT_PATH)
    env.update({n: parent_env[n] for n in spec.env_allow if n in parent_env})
    env.update(spec.env)
    tmp = home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
    env["HOME"] = str(home)
    env["TMPDIR"] = str(tmp)
    # ExecutorSpec already refuses ZLOTH_ names; this holds even for a spec built in code
    return {name: value for name, value in env.items() if not name.upper().startswith(_NEVER)}
