"""Deterministic local git repositories for tests: a bare "origin" with a few commits.

Same arguments, same commit shas: identity, dates and contents are fixed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Upstream Dev",
    "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "Upstream Dev",
    "GIT_COMMITTER_EMAIL": "dev@example.com",
    "LC_ALL": "C",
}
_DIRS = ("src/app", "src/lib", "docs", "tests")
BINARY_FILE = "assets/logo.bin"


def git(
    *args: str,
    cwd: Path | None = None,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run git for a test (blocking), with no user or system config; return stdout."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    full_env.update(_ENV)
    full_env.update(env or {})
    done = subprocess.run(
        ["git", *args], cwd=cwd, input=input, env=full_env, capture_output=True, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr.decode()}")
    return done.stdout.decode()


def origin_files(files: int = 20) -> list[str]:
    """The paths `make_origin(files=files)` creates: README.md, a binary, the rest in dirs."""
    names = ["README.md", BINARY_FILE]
    names += [f"{_DIRS[i % len(_DIRS)]}/file{i:02d}.txt" for i in range(max(0, files - 2))]
    return names


def make_origin(tmp: Path, files: int = 20, commits: int = 3) -> Path:
    """Build `tmp/origin.git`, a bare repository whose branch `main` has `commits` commits.

    The first commit adds every file of `origin_files(files)`; commit k > 0 appends a line to
    the k-th text file. HEAD is `main`.
    """
    work = tmp / "origin-work"
    bare = tmp / "origin.git"
    tmp.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", "--initial-branch=main", str(work))
    names = origin_files(files)
    texts = [n for n in names if n != BINARY_FILE]
    for k in range(commits):
        if k == 0:
            for name in names:
                _write(work / name, name)
        else:
            target = work / texts[k % len(texts)]
            target.write_text(target.read_text() + f"change {k}\n")
        git("add", "--all", cwd=work)
        git("commit", "--quiet", "-m", f"commit {k}", cwd=work, env=_dated(k))
    git("clone", "--quiet", "--bare", str(work), str(bare))
    return bare


def add_commit(
    origin: Path,
    files: dict[str, str | None],
    message: str,
    branch: str = "main",
    start: str = "main",
) -> str:
    """Commit `files` (None deletes one) onto `branch` of the bare `origin` (created from
    `start` if new), as a push would; return the new commit's sha."""
    exists = (
        subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
            cwd=origin,
            capture_output=True,
            check=False,
            env={**os.environ, **_ENV},
        ).returncode
        == 0
    )
    parent = git("rev-parse", branch if exists else start, cwd=origin).strip()
    index = {"GIT_INDEX_FILE": str(origin / f"tmp-index-{branch.replace('/', '_')}")}
    git("read-tree", parent, cwd=origin, env=index)
    for name, text in files.items():
        if text is None:
            git("update-index", "--force-remove", "--", name, cwd=origin, env=index)
            continue
        blob = git("hash-object", "-w", "--stdin", cwd=origin, input=text.encode()).strip()
        git("update-index", "--add", "--cacheinfo", f"100644,{blob},{name}", cwd=origin, env=index)
    tree = git("write-tree", cwd=origin, env=index).strip()
    os.unlink(index["GIT_INDEX_FILE"])
    sha = git("commit-tree", tree, "-p", parent, "-m", message, cwd=origin, env=_dated(99)).strip()
    git("update-ref", f"refs/heads/{branch}", sha, cwd=origin)
    return sha


def _write(path: Path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if name == BINARY_FILE:
        path.write_bytes(bytes(range(256)) * 4)  # NUL bytes: git sees a binary file
    else:
        path.write_text(f"# {name}\n" + "".join(f"line {i}\n" for i in range(10)))


def _dated(k: int) -> dict[str, str]:
    date = f"{1_704_067_200 + 60 * k} +0000"  # 2024-01-01 plus k minutes
    return {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
