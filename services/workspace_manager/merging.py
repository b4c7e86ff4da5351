"""zloth's merges inside a workspace (follow-up sync, base merge, push retry).

A merge that conflicts is either aborted (MergeConflict names the files) or left in place
for the agent to resolve, as the caller asks. Merge commits are zloth's: hooks, editors
and custom merge drivers of the agent's config never run (services/core/git.py).
"""

from __future__ import annotations

from pathlib import Path

from services.core.git import run_git
from services.workspace_manager.commits import display
from services.workspace_manager.records import WorkspaceError


class MergeConflict(Exception):
    """Merging `theirs` into the workspace's branch conflicts in `files`."""

    def __init__(self, what: str, files: list[str]) -> None:
        super().__init__(f"merging {what} conflicts in: {', '.join(files)}")
        self.what = what
        self.files = files


async def is_ancestor(path: Path, older: str, newer: str) -> bool:
    found = await run_git(["merge-base", "--is-ancestor", older, newer], cwd=path, check=False)
    return found.code == 0


async def head(path: Path) -> str:
    return (await run_git(["rev-parse", "--verify", "HEAD^{commit}"], cwd=path)).stdout.strip()


async def merge(path: Path, theirs: str, what: str, *, keep_conflicts: bool) -> list[str]:
    """Merge commit `theirs` into HEAD; return [] when merged, or the conflicting files.

    Fast-forwards when HEAD is behind. On conflict: with `keep_conflicts` the merge stays
    in progress (markers in the files), else it is aborted and MergeConflict is raised.
    """
    ours = await head(path)
    if await is_ancestor(path, theirs, ours):
        return []
    if await is_ancestor(path, ours, theirs):
        await run_git(["merge", "--quiet", "--ff-only", theirs], cwd=path)
        return []
    done = await run_git(
        [
            "-c", "merge.conflictStyle=merge", "-c", "rerere.enabled=false",
            "merge", "--quiet", "--no-ff", "--no-edit", "--no-verify", "--no-signoff",
            "-m", f"Merge {what}", theirs,
        ],
        cwd=path,
        check=False,
    )
    if done.code == 0:
        return []
    listed = await run_git(["diff", "--name-only", "--diff-filter=U", "-z"], cwd=path)
    files = sorted(display(f) for f in listed.stdout.split("\0") if f)
    if not files:  # failed for another reason (a file in the way, …): not a conflict
        await run_git(["merge", "--abort"], cwd=path, check=False)
        raise WorkspaceError(f"git merge of {what} failed: {done.stderr.strip()[-500:]}")
    if not keep_conflicts:
        await run_git(["merge", "--abort"], cwd=path)
        raise MergeConflict(what, files)
    return files
