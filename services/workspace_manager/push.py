"""Push a run's branch upstream without ever losing the remote's commits.

Every push is `--force-with-lease` against the sha zloth last saw on the remote (nothing,
for a new branch): it may replace zloth's own earlier push (a retried attempt), never a
commit someone else pushed meanwhile. Rejected (non-fast-forward or stale lease): fetch
the remote branch, merge it (a conflict fails with the files listed), push again with the
fetched sha as the lease. Workspaces are never shallow (they borrow the whole mirror's
objects and zloth removes a `shallow` file an agent plants), so there is nothing to
unshallow. Credentials come in `env`, per command (credentials.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from services.core import metrics
from services.core.git import GitError, run_git
from services.workspace_manager.merging import head, merge


class PushResult(msgspec.Struct, frozen=True, kw_only=True):
    sha: str  # what the remote branch is now
    attempts: int
    merged: list[str] = []  # remote shas merged in before the push went through


class PushRejected(Exception):
    """The remote refused the push for a reason a retry will not fix (protected branch,
    hook), or kept moving through every attempt."""


async def push_branch(
    path: Path,
    url: str,
    branch: str,
    lease: str | None,
    env: dict[str, str],
    *,
    attempts: int = 4,
    backoff: float = 0.5,
) -> PushResult:
    """Push HEAD of `path` (on `branch`) to `url`; see the module docstring."""
    ref = f"refs/heads/{branch}"
    merged: list[str] = []
    for attempt in range(1, attempts + 1):
        local = await head(path)
        done = await run_git(
            ["push", "--porcelain", "--no-verify", "--quiet",
             f"--force-with-lease={ref}:{lease or ''}", url, f"{local}:{ref}"],
            cwd=path, env=env, check=False, timeout=600,
        )
        if done.code == 0:
            metrics.git_push_total.labels("merged_then_pushed" if merged else "pushed").inc()
            return PushResult(sha=local, attempts=attempt, merged=merged)
        if "[remote rejected]" in done.stdout or "[rejected]" not in done.stdout:
            # A hook or branch protection said no, or the push did not get that far.
            metrics.git_push_total.labels("failed").inc()
            if "[remote rejected]" in done.stdout:
                raise PushRejected(f"push of {branch} refused: {done.stdout.strip()[-500:]}")
            raise GitError(["push", url, ref], done.code, done.stderr)
        remote = await _fetch_branch(path, url, ref, env)
        if remote is not None:
            await merge(path, remote, f"remote branch {branch}", keep_conflicts=False)
            merged.append(remote)
        lease = remote
        await asyncio.sleep(backoff * attempt)
    metrics.git_push_total.labels("rejected").inc()
    raise PushRejected(f"{branch} kept moving on the remote through {attempts} attempts")


async def _fetch_branch(path: Path, url: str, ref: str, env: dict[str, str]) -> str | None:
    """The remote's `ref` sha with its objects fetched into the workspace, or None if gone."""
    done = await run_git(
        ["fetch", "--quiet", "--no-tags", url, ref], cwd=path, env=env, check=False, timeout=600
    )
    if done.code != 0:
        if "couldn't find remote ref" in done.stderr:
            return None
        raise GitError(["fetch", url, ref], done.code, done.stderr)
    fetched = await run_git(["rev-parse", "--verify", "FETCH_HEAD^{commit}"], cwd=path)
    return fetched.stdout.strip()
