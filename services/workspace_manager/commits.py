"""zloth's commit of what an agent left in a workspace: one commit on the run's base (two
parents when the agent resolved a merge), secrets kept out, a description for the event."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import msgspec

from schemas.runs import FileChange
from services.core.git import run_git
from services.workspace_manager.records import CommitRecord, WorkspaceError

TRAILER = "Zloth-Run"
# Basenames an agent must never commit (secrets); matched case-insensitively.
REJECTED_NAMES = (".env", ".env.*", "*.pem", "*.key", "id_rsa*", ".npmrc", ".netrc")
DIFF_OPTS = ("--no-ext-diff", "--no-textconv", "--no-renames", "--no-color")
_MARKERS = (b"<<<<<<< ", b">>>>>>> ", b"|||||||", b"=======\n", b"=======\r\n")


class CommitResult(msgspec.Struct, frozen=True, kw_only=True):
    commit_sha: str | None  # None: nothing to commit
    files_changed: list[FileChange] = []
    diff: str = ""
    diff_truncated: bool = False
    rejected_paths: list[str] = []


class ConflictMarkersError(WorkspaceError):
    """The agent was asked to resolve a conflict and left conflict markers behind."""


async def recorded_commit(
    path: Path,
    done: CommitRecord | None,
    branch_ref: str,
    parents: list[str],
    run_id: str,
) -> CommitRecord | None:
    """zloth's earlier commit for this run if it is still the branch head, else None.

    The record lives outside the workspace: a commit the agent made with a forged trailer
    (and a committed `.env`) is never taken for zloth's.
    """
    if done is None or done.base_sha != parents[0] or done.run_id != run_id:
        return None
    head = await run_git(["rev-parse", "--verify", "--quiet", branch_ref], cwd=path, check=False)
    if head.stdout.strip() != done.sha:
        return None
    fmt = f"--format=%P%n%(trailers:key={TRAILER},valueonly)"
    shown = await run_git(["show", "--no-patch", fmt, done.sha], cwd=path)
    lines = shown.stdout.splitlines()
    if not lines or lines[0].split() != parents or run_id not in lines[1:]:
        return None
    return done


async def commit_worktree(
    path: Path, branch_ref: str, parents: list[str], message: str, run_id: str, summary: str
) -> tuple[str | None, list[str]]:
    """Commit the worktree on `parents` (the first is the base) as zloth; (sha, rejected)."""
    base_sha = parents[0]
    summary_path = path / summary
    if summary_path.is_symlink() or summary_path.is_file():
        summary_path.unlink()
    # Agents should not commit, but some do, some switch branches: whatever they left, the
    # result is the worktree on top of base_sha as one commit on the run's branch.
    await run_git(["symbolic-ref", "HEAD", branch_ref], cwd=path)
    await run_git(["update-ref", branch_ref, base_sha], cwd=path)
    # --sparse: files the agent made outside a sparse cone count too (without it git refuses).
    await run_git(["add", "--all", "--sparse"], cwd=path)
    rejected = await _unstage_rejected(path, base_sha, summary)
    tree = (await run_git(["write-tree"], cwd=path)).stdout.strip()
    base_tree = (await run_git(["rev-parse", f"{base_sha}^{{tree}}"], cwd=path)).stdout.strip()
    if tree == base_tree and len(parents) == 1:
        return None, rejected
    body = f"{message.strip() or f'zloth run {run_id}'}\n\n{TRAILER}: {run_id}\n"
    parent_args = [arg for p in parents for arg in ("-p", p)]
    # Plumbing, not `git commit`: no hook, template, editor or signing can come into play.
    made = await run_git(
        ["commit-tree", tree, *parent_args, "-F", "-"], cwd=path, input=body.encode()
    )
    sha = made.stdout.strip()
    await run_git(["update-ref", "-m", f"zloth: run {run_id}", branch_ref, sha, base_sha], cwd=path)
    return sha, rejected


def check_no_markers(path: Path, files: list[str]) -> None:
    """Raise ConflictMarkersError naming the `files` that still hold conflict markers."""
    left = []
    for rel in files:
        target = path / rel
        if target.is_symlink() or not target.is_file():
            continue  # resolved by deleting it
        with target.open("rb") as fh:
            if any(line.startswith(_MARKERS) for line in fh):
                left.append(rel)
    if left:
        raise ConflictMarkersError(f"conflict markers remain in: {', '.join(sorted(left))}")


async def _unstage_rejected(path: Path, base_sha: str, summary: str) -> list[str]:
    """Put back the base version (or nothing) in the index for paths that must not be committed."""
    raw = await run_git(
        ["diff", "--cached", "--raw", "-z", "--no-abbrev", *DIFF_OPTS, base_sha], cwd=path
    )
    changes = _parse_raw(raw.stdout)
    rejected = sorted(p for old, new, p in changes if _is_rejected(p, old, new))
    to_reset = rejected + [p for _, _, p in changes if p == summary]
    if to_reset:
        await run_git(
            ["reset", "--quiet", base_sha, "--pathspec-from-file=-", "--pathspec-file-nul"],
            cwd=path,
            env={"GIT_LITERAL_PATHSPECS": "1"},  # a file named `*.pem` is not a glob
            input=b"\0".join(os.fsencode(p) for p in to_reset),
        )
    return [display(p) for p in rejected]


async def describe(
    path: Path, base_sha: str, done: CommitRecord, max_diff_bytes: int
) -> CommitResult:
    span = [base_sha, done.sha, "--"]
    numstat = await run_git(["diff", "--numstat", "-z", *DIFF_OPTS, *span], cwd=path)
    names = await run_git(["diff", "--name-status", "-z", *DIFF_OPTS, *span], cwd=path)
    patch = await run_git(["diff", *DIFF_OPTS, *span], cwd=path, max_stdout=max_diff_bytes)
    raw = patch.stdout.encode("utf-8", "surrogateescape")
    if patch.truncated and b"\n" in raw:
        raw = raw[: raw.rindex(b"\n") + 1]  # whole lines only
    return CommitResult(
        commit_sha=done.sha,
        files_changed=_file_changes(numstat.stdout, names.stdout),
        diff=raw.decode("utf-8", "replace"),
        diff_truncated=patch.truncated,
        rejected_paths=done.rejected_paths,
    )


def _file_changes(numstat: str, name_status: str) -> list[FileChange]:
    counts: dict[str, tuple[int, int]] = {}
    for record in filter(None, numstat.split("\0")):
        added, removed, name = record.split("\t", 2)
        # Binary files show "-": they count as no lines.
        counts[name] = (int(added) if added != "-" else 0, int(removed) if removed != "-" else 0)
    fields = name_status.split("\0")
    return [
        FileChange(
            path=display(name),
            added=counts.get(name, (0, 0))[0],
            removed=counts.get(name, (0, 0))[1],
            status=status,
        )
        for status, name in zip(fields[0:-1:2], fields[1::2], strict=True)
    ]


def _parse_raw(out: str) -> list[tuple[str, str, str]]:
    """(old mode, new mode, path) from `git diff --raw -z --no-renames`."""
    fields = out.split("\0")
    return [
        (head[1:].split()[0], head[1:].split()[1], name)
        for head, name in zip(fields[0:-1:2], fields[1::2], strict=True)
    ]


def _is_rejected(path: str, old_mode: str, new_mode: str) -> bool:
    parts = path.split("/")
    name = parts[-1].lower()
    return (
        ".git" in parts
        or any(fnmatch.fnmatchcase(name, pattern) for pattern in REJECTED_NAMES)
        # A new gitlink is a repository the agent cloned inside the workspace.
        or (new_mode == "160000" and old_mode != "160000")
    )


def display(path: str) -> str:
    """A path git printed, made valid UTF-8 for events (undecodable bytes become U+FFFD)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
