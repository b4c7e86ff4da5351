"""Where a follow-up run starts: the previous run's branch and its latest commit.

Sources, best first: the previous run's record on this host (branch, zloth's commit), its
commit kept in the mirror (`refs/zloth/runs/<run_id>`, survives the workspace), and when
the record is on another host, the mirror's branch whose tip zloth committed for that run
(its `Zloth-Run` trailer). The workspace is then synced with the remote branch and the
base merged in; a conflict stops there (the agent, when asked to, resolves one merge at a time).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from services.core.git import run_git
from services.workspace_manager import merging
from services.workspace_manager.commits import TRAILER
from services.workspace_manager.mirrors import (
    RUNS_NAMESPACE,
    MirrorCache,
    UnknownRefError,
    resolve,
)
from services.workspace_manager.records import Record


class FollowUp(msgspec.Struct, frozen=True, kw_only=True):
    branch: str  # the branch the previous run worked on (the follow-up continues it)
    start: str | None  # the commit to start from, None when nothing of it is known
    remote: str | None  # the upstream branch's tip in the mirror, if it has one


async def locate(mirror: Path, previous_run_id: str, previous: Record | None,
                 fallback_branch: str) -> FollowUp:
    branch = previous.workspace.branch if previous else None
    if branch is None:
        branch = await _branch_of_run(mirror, previous_run_id) or fallback_branch
    candidates = [f"{RUNS_NAMESPACE}{previous_run_id}"]
    if previous is not None:
        if previous.commit is not None:
            candidates.append(previous.commit.sha)
        candidates.append(previous.workspace.base_sha)  # it committed nothing
    start = None
    for candidate in candidates:
        try:
            start = await resolve(mirror, candidate)
            break
        except UnknownRefError:
            continue
    try:
        remote: str | None = await resolve(mirror, f"refs/heads/{branch}")
    except UnknownRefError:
        remote = None
    return FollowUp(branch=branch, start=start, remote=remote)


async def _branch_of_run(mirror: Path, run_id: str) -> str | None:
    listed = await run_git(
        ["for-each-ref", f"--format=%(refname:lstrip=2)%00%(trailers:key={TRAILER},valueonly)",
         "refs/heads/"],
        cwd=mirror,
    )
    for line in listed.stdout.splitlines():
        name, _, runs = line.partition("\0")
        if run_id in runs.split():
            return name
    return None


async def sync_and_merge(
    path: Path, mirrors: MirrorCache, mirror: Path, merges: list[tuple[str | None, str]],
    *, keep_conflicts: bool,
) -> tuple[list[str], str | None]:
    """Merge each (sha, what) in turn into the workspace; (conflicting files, the sha left
    in conflict) when one conflicts and `keep_conflicts`, else ([], None)."""
    for theirs, what in merges:
        if theirs is None:
            continue
        if mirrors.partial(mirror):  # both sides' and their merge base's blobs are needed
            base = await run_git(["merge-base", "HEAD", theirs], cwd=path, check=False)
            for sha in (theirs, *base.stdout.split()[:1]):
                await mirrors.fetch_blobs(mirror, sha)
        conflicts = await merging.merge(path, theirs, what, keep_conflicts=keep_conflicts)
        if conflicts:
            return conflicts, theirs
    return [], None


async def pending_merge(path: Path, theirs: str | None) -> list[str]:
    """[theirs] when the workspace still shows the merge left for the agent (in progress,
    or committed by the agent), else []: after an abort or a reset to the base, a second
    parent would claim a merge whose changes are not there."""
    if theirs is None:
        return []
    try:
        in_progress = (path / ".git" / "MERGE_HEAD").read_text().split()[:1] == [theirs]
    except OSError:
        in_progress = False
    head = await run_git(["show", "-s", "--format=%P", "HEAD"], cwd=path, check=False)
    return [theirs] if in_progress or theirs in head.stdout.split() else []
