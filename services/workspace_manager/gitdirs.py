"""The `.git` of every workspace, made one way whether the workspace is fresh, warm or
recycled, so that none can be told from another.

What `git init --template=` makes (no hooks, no excludes), the mirror's objects borrowed through
`objects/info/alternates` (nothing copied), `origin` = upstream without credentials, no
reflogs (they would keep a previous run's commits), remote-tracking refs and tags written
from the mirror's branches and tags.

Why alternates rather than `git worktree`: a worktree shares the mirror's refs and object
store, so an agent's `git commit` or `git gc` would write into the mirror every run
shares; concurrent `worktree add` on one mirror also fails intermittently (CONVENTIONS.md).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from services.core.git import GitError, run_git
from services.workspace_manager.credentials import without_credentials
from services.workspace_manager.refs import RefSnapshot


def init_gitdir(dest: Path, mirror: Path, url: str) -> None:
    """Make `dest/.git` (dest may already hold a working tree) for a workspace of `mirror`:
    what `git init --template=` makes, written here (one git process less per workspace)."""
    gitdir = dest / ".git"
    for sub in ("objects/info", "objects/pack", "refs/heads", "refs/tags"):
        (gitdir / sub).mkdir(parents=True, exist_ok=True)
    _write_atomic(gitdir / "objects" / "info" / "alternates",
                  f"{(mirror / 'objects').absolute()}\n".encode())
    _write_atomic(gitdir / "HEAD", b"ref: refs/heads/main\n")
    # Reflogs off: they would keep what a previous run or a discarded attempt committed.
    _write_atomic(gitdir / "config", (
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
        "\tlogallrefupdates = false\n"
        '[remote "origin"]\n'
        f"\turl = {_config_value(without_credentials(url))}\n"
        "\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
    ).encode())


def sync_refs(dest: Path, mirror: RefSnapshot) -> None:
    """Make the workspace's remote-tracking refs and tags those of the mirror's snapshot."""
    lines = []
    for ref, sha in mirror.under("refs/heads/", "refs/tags/").items():
        if ref.startswith("refs/heads/"):
            ref = "refs/remotes/origin/" + ref.removeprefix("refs/heads/")
        lines.append(f"{sha} {ref}\n")
    gitdir = dest / ".git"
    # packed-refs is git's documented format; without a "sorted" header git sorts it itself.
    _write_atomic(gitdir / "packed-refs", "".join(sorted(lines, key=_refname)).encode())
    remote_head = gitdir / "refs" / "remotes" / "origin" / "HEAD"
    if mirror.head:
        remote_head.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(remote_head, f"ref: refs/remotes/origin/{mirror.head}\n".encode())
    else:
        remote_head.unlink(missing_ok=True)


async def checkout_new(dest: Path, sha: str, branch: str) -> None:
    """First checkout into an empty working tree: HEAD on a new `branch` at `sha`, every
    file written (as cheap as a checkout can be: the benchmark's floor is this command)."""
    start_branch(dest, branch, sha)
    done = await run_git(
        ["checkout", "--quiet", "--force", "--no-recurse-submodules", sha, "--", "."],
        cwd=dest, check=False,
    )
    if done.code != 0 and "did not match any file" not in done.stderr:  # an empty tree
        raise GitError(["checkout", sha], done.code, done.stderr)


async def set_sparse(dest: Path, paths: Sequence[str]) -> None:
    """Cone-mode sparse checkout of `paths` (top-level files are always there)."""
    await run_git(
        ["sparse-checkout", "set", "--cone", "--stdin"],
        cwd=dest,
        input="".join(f"{p}\n" for p in paths).encode(),
    )


async def checkout(dest: Path, sha: str, branch: str | None) -> None:
    """Index and files to `sha` (files whose index entry is clean are not rewritten), HEAD
    on `branch` made at `sha`, or detached when None."""
    where = ["-B", branch, sha] if branch else ["--detach", sha]
    # -f: a one-way merge to the target; whatever the index held is not carried over.
    await run_git(["checkout", "--quiet", "--force", "--no-recurse-submodules", *where], cwd=dest)


def start_branch(dest: Path, branch: str, sha: str) -> None:
    """HEAD on a new `branch` at `sha` (index and files untouched)."""
    ref = dest / ".git" / "refs" / "heads" / branch
    ref.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(ref, f"{sha}\n".encode())
    _write_atomic(dest / ".git" / "HEAD", f"ref: refs/heads/{branch}\n".encode())


def detached_at(dest: Path) -> str | None:
    """The sha of a detached HEAD (a warm entry's), else None."""
    try:
        head = (dest / ".git" / "HEAD").read_text().strip()
    except OSError:
        return None
    return head if len(head) in (40, 64) and all(c in "0123456789abcdef" for c in head) else None


def _refname(line: str) -> str:
    return line.split(" ", 1)[1]


def _config_value(value: str) -> str:
    if any(c in value for c in "\0\n\r"):
        raise ValueError(f"not a repository URL: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_atomic(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.zloth-{secrets.token_hex(4)}")
    tmp.write_bytes(content)
    os.replace(tmp, path)
