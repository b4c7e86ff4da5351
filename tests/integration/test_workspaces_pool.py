"""Warm workspaces against real git: taking one writes only what differs, and a recycled
workspace cannot be told from a fresh one whatever the previous agent did."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.workspace_manager.gc import Janitor
from services.workspace_manager.mirrors import MirrorCache
from services.workspace_manager.pool import WarmPool
from services.workspace_manager.workspaces import Workspace, WorkspaceFactory
from tests.support.gitrepo import add_commit, git, make_origin, origin_files

REPO = "acme/widgets"


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_origin(tmp_path / "upstream", files=30)


@pytest.fixture
def mirrors(tmp_path: Path) -> MirrorCache:
    return MirrorCache(tmp_path / "mirrors", refresh_seconds=0)


def _factory(mirrors: MirrorCache, root: Path, size: int) -> tuple[WorkspaceFactory, Janitor]:
    pool = WarmPool(root, mirrors, size=size)
    factory = WorkspaceFactory(mirrors, root, pool=pool)
    return factory, Janitor(factory, keep_seconds=0)


async def _create(factory: WorkspaceFactory, origin: Path, run_id: str) -> Workspace:
    return await factory.create(run_id, REPO, str(origin), None, f"zloth/{run_id}")


async def test_warm_workspace_is_taken_and_only_changed_files_are_written(
    mirrors: MirrorCache, origin: Path, tmp_path: Path
) -> None:
    """A run after a pool round gets a ready entry: files unchanged between the entry's
    commit and the new base are not written again (same inode, mtime and ctime), the
    changed one is, and the remote-tracking refs are the mirror's of now."""
    factory, janitor = _factory(mirrors, tmp_path / "ws", size=1)
    await _create(factory, origin, "first")
    assert factory.pool is not None
    assert await factory.pool.fill(janitor.detach_finished) == 1
    entry = factory.pool.ready(REPO)[0]
    kept = (entry / "docs/file02.txt").stat()
    new_main = add_commit(origin, {"README.md": "new readme\n"}, "upstream change")
    ws = await _create(factory, origin, "second")
    path = Path(ws.path)
    assert factory.pool.ready(REPO) == []
    assert ws.base_sha == new_main
    assert (path / "README.md").read_text() == "new readme\n"
    now = (path / "docs/file02.txt").stat()
    assert (now.st_ino, now.st_mtime_ns, now.st_ctime_ns) == (
        kept.st_ino, kept.st_mtime_ns, kept.st_ctime_ns)
    assert git("rev-parse", "origin/main", cwd=path).strip() == new_main
    assert git("status", "--porcelain", "--ignored", cwd=path) == ""
    assert git("symbolic-ref", "--short", "HEAD", cwd=path).strip() == "zloth/second"


def _hostile_agent(path: Path, outside: Path) -> None:
    """Everything a previous agent could leave behind, in the tree and in .git."""
    readme = path / "README.md"
    st = readme.stat()
    readme.write_text("# tampered, same size!\n"[: st.st_size].ljust(st.st_size, "x"))
    os.utime(readme, ns=(st.st_atime_ns, st.st_mtime_ns))  # stat looks untouched
    git("add", "README.md", cwd=path)  # …and the index agrees with the tampered file
    os.utime(readme, ns=(st.st_atime_ns, st.st_mtime_ns))
    (path / "docs/file02.txt").chmod(0o4777)
    (path / "docs/file02.txt").unlink()
    os.link(outside, path / "docs/file02.txt")  # a later in-place write would reach it
    (path / "src/app/file00.txt").chmod(0o777)
    (path / ".gitignore").write_text("build/\n")
    (path / "build").mkdir()
    (path / "build/cache.o").write_text("object")
    (path / "notes.txt").write_text("left behind")
    os.mkfifo(path / "pipe")
    (path / "link-out").symlink_to(outside.parent)
    git("init", "-q", str(path / "vendored"))
    (path / "vendored/x").write_text("nested repository")
    git("checkout", "-q", "-b", "agent-branch", cwd=path)
    git("commit", "-q", "-am", "agent commit", cwd=path)
    git("tag", "agent-tag", cwd=path)
    git("config", "user.name", "Agent", cwd=path)
    hooks = path / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "post-checkout").write_text("#!/bin/sh\necho pwned > /tmp/pwned\n")
    (path / ".git" / "info").mkdir(exist_ok=True)
    (path / ".git" / "info" / "exclude").write_text("*.secret\n")


def _tree_snapshot(path: Path, run_id: str) -> dict[str, tuple[int, bytes | str]]:
    """Every file under `path` (.git included, the index's stat data aside): mode and
    content, the run id replaced so two runs compare."""
    found: dict[str, tuple[int, bytes | str]] = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        st = p.lstat()
        if rel == ".git/index":
            content: bytes | str = git("ls-files", "-s", cwd=path)
        elif stat.S_ISREG(st.st_mode):
            content = p.read_bytes().replace(run_id.encode(), b"RUN")
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(p)
        else:
            content = b""
        found[rel.replace(run_id, "RUN")] = (stat.S_IMODE(st.st_mode) | stat.S_IFMT(st.st_mode)
                                             , content)
        assert not stat.S_ISREG(st.st_mode) or st.st_nlink == 1, rel
    return found


async def test_recycled_workspace_is_indistinguishable_from_a_fresh_one(
    mirrors: MirrorCache, origin: Path, tmp_path: Path
) -> None:
    """A finished run's workspace, after an agent that tampered with files (same size and
    mtime, index forged), modes, links, a FIFO, a nested repository, branches, tags, config
    and hooks, is recycled into a warm one; a run taking it sees exactly what a run with a
    fresh workspace sees, and the file outside that was hard-linked is never written."""
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours\n")
    factory, janitor = _factory(mirrors, tmp_path / "ws", size=1)
    first = await _create(factory, origin, "first")
    _hostile_agent(Path(first.path), outside)
    assert await factory.finish("first")
    assert factory.pool is not None
    assert await factory.pool.fill(janitor.detach_finished) == 1
    assert factory.pool.made == {"fresh": 0, "recycled": 1}
    warm = await _create(factory, origin, "warm")
    plain, _ = _factory(mirrors, tmp_path / "plain", size=0)
    fresh = await _create(plain, origin, "fresh")
    assert _tree_snapshot(Path(warm.path), "warm") == _tree_snapshot(Path(fresh.path), "fresh")
    for ws in (warm, fresh):
        path = Path(ws.path)
        assert git("for-each-ref", "--format=%(refname)", cwd=path).split() == [
            f"refs/heads/zloth/{path.name}", "refs/remotes/origin/HEAD",
            "refs/remotes/origin/main"]
        assert git("status", "--porcelain", "--ignored", "--untracked-files=all", cwd=path) == ""
        assert git("config", "--local", "--list", cwd=path).count("user.name") == 0
    assert {p for p in _files(Path(warm.path))} == set(origin_files(30))
    with (Path(warm.path) / "docs/file02.txt").open("a") as in_place:
        in_place.write("agent writes in place\n")
    assert outside.read_text() == "not yours\n"
    assert not Path("/tmp/pwned").exists()


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(root).parts}


async def test_pool_is_topped_up_per_busy_repository_and_racing_takes_get_distinct_entries(
    mirrors: MirrorCache, origin: Path, tmp_path: Path
) -> None:
    """A round fills `size` entries (fresh when no finished workspace is old enough) and a
    second round adds none; two factories (replicas) on one root never take the same."""
    root = tmp_path / "ws"
    factory, janitor = _factory(mirrors, root, size=2)
    other = WorkspaceFactory(mirrors, root, pool=WarmPool(root, mirrors, size=2))
    await _create(factory, origin, "seed")
    assert factory.pool is not None
    assert await factory.pool.fill(janitor.detach_finished) == 2
    assert await factory.pool.fill(janitor.detach_finished) == 0
    a, b = await _create(factory, origin, "a"), await _create(other, origin, "b")
    assert factory.pool.ready(REPO) == []
    assert a.path != b.path
    for ws in (a, b):
        assert _files(Path(ws.path)) == set(origin_files(30))
        git("fsck", "--no-progress", cwd=Path(ws.path))
