"""The `.git` of every workspace, made one way whether the workspace is fresh, warm or
recycled, so that none can be told from another.

`git init` without a template (no hooks, no excludes), the mirror's objects borrowed through
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

from services.core.git import run_git
from services.workspace_manager.credentials import without_credentials

_ZERO = "0" * 40


async def init_gitdir(dest: Path, mirror: Path, url: str) -> None:
    """Make `dest/.git` (dest may already hold a working tree) for a workspace of `mirror`."""
    await run_git(["init", "--quiet", "--template=", str(dest)])
    gitdir = dest / ".git"
    (gitdir / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (gitdir / "objects" / "info" / "alternates").write_text(f"{(mirror / 'objects').absolute()}\n")
    config = (gitdir / "config").read_text()
    # Reflogs would keep what a previous run or a discarded attempt committed.
    config = config.replace("logallrefupdates = true", "logallrefupdates = false")
    config += (
        '[remote "origin"]\n'
        f"\turl = {_config_value(without_credentials(url))}\n"
        "\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
    )
    _write_atomic(gitdir / "config", config.encode())


async def sync_refs(dest: Path, mirror: Path) -> None:
    """Make the workspace's remote-tracking refs and tags those of the mirror now."""
    listed = await run_git(
        ["for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/", "refs/tags/"],
        cwd=mirror,
    )
    head = await run_git(["symbolic-ref", "--quiet", "HEAD"], cwd=mirror, check=False)
    lines = []
    for line in listed.stdout.splitlines():
        sha, _, ref = line.partition(" ")
        if ref.startswith("refs/heads/"):
            ref = "refs/remotes/origin/" + ref.removeprefix("refs/heads/")
        lines.append(f"{sha} {ref}\n")
    gitdir = dest / ".git"
    # packed-refs is git's documented format; without a "sorted" header git sorts it itself.
    _write_atomic(gitdir / "packed-refs", "".join(sorted(lines, key=_refname)).encode())
    remote_head = gitdir / "refs" / "remotes" / "origin" / "HEAD"
    default = head.stdout.strip().removeprefix("refs/heads/")
    if head.code == 0 and default:
        remote_head.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(remote_head, f"ref: refs/remotes/origin/{default}\n".encode())
    else:
        remote_head.unlink(missing_ok=True)


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
