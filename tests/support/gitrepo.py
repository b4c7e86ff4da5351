"""Deterministic local git repositories for tests: a bare "origin" with a few commits.

Same arguments, same commit shas: identity, dates and contents are fixed.
"""

from __future__ import annotations

import os
import random
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


def make_large_origin(
    dest: Path, files: int = 3200, commits: int = 30, seed: int = 5
) -> Path:
    """Build the bare repository `dest` (branch `main`) like a mid-sized project: `files`
    source-like text files in 160 directories under `pkg00`…`pkg39` (~26 MB checked out),
    then `commits` commits each rewriting 60 files and replacing a 1.8 MB binary asset
    (≥ 50 MB of packed history). Written with `git fast-import`: a few seconds."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz_"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(3000)]
    lines = [" ".join(rng.choices(words, k=rng.randint(3, 12))) + "\n" for _ in range(20000)]
    dirs = [f"pkg{d:02d}/sub{s}" for d in range(40) for s in range(4)]
    names = [f"{dirs[i % len(dirs)]}/mod{i:04d}.py" for i in range(files)]
    stream = bytearray()

    def put(path: str, data: bytes) -> None:
        stream.extend(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")

    for k in range(commits + 1):
        message = f"commit {k}\n".encode()
        stream.extend(f"commit refs/heads/main\ncommitter Bench <bench@example.com> "
                      f"{1_704_067_200 + 60 * k} +0000\ndata {len(message)}\n".encode() + message)
        for name in names if k == 0 else rng.sample(names, 60):
            put(name, "".join(rng.choices(lines, k=rng.randint(40, 200))).encode())
        if k > 0:
            put(f"assets/blob{k % 3}.bin", rng.randbytes(1_800_000))
        stream.extend(b"\n")
    git("init", "--quiet", "--bare", "--initial-branch=main", str(dest))
    git("fast-import", "--quiet", cwd=dest, input=bytes(stream))
    git("repack", "-a", "-d", "-q", cwd=dest)
    return dest


def _write(path: Path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if name == BINARY_FILE:
        path.write_bytes(bytes(range(256)) * 4)  # NUL bytes: git sees a binary file
    else:
        path.write_text(f"# {name}\n" + "".join(f"line {i}\n" for i in range(10)))


def _dated(k: int) -> dict[str, str]:
    date = f"{1_704_067_200 + 60 * k} +0000"  # 2024-01-01 plus k minutes
    return {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
