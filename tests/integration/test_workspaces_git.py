"""The workspace-manager's git layer against real git: mirrors, workspaces, commits, hostility."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from services.core.git import GitError, GitTimeout, run_git
from services.workspace_manager.mirrors import (
    MirrorCache,
    UnknownRefError,
    default_branch,
    resolve,
)
from services.workspace_manager.workspaces import Workspace, WorkspaceError, WorkspaceFactory
from tests.support.gitrepo import BINARY_FILE, add_commit, git, make_origin, origin_files

REPO = "acme/widgets"


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_origin(tmp_path / "upstream")


@pytest.fixture
def mirrors(tmp_path: Path) -> MirrorCache:
    return MirrorCache(tmp_path / "mirrors", refresh_seconds=3600)


@pytest.fixture
def factory(mirrors: MirrorCache, tmp_path: Path) -> WorkspaceFactory:
    return WorkspaceFactory(mirrors, tmp_path / "workspaces")


async def _create(
    factory: WorkspaceFactory, origin: Path, run_id: str = "run1", **kwargs: object
) -> Workspace:
    args: dict[str, object] = {"base_ref": None, "branch": f"zloth/{run_id}", **kwargs}
    return await factory.create(run_id, REPO, str(origin), **args)  # type: ignore[arg-type]


def _files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


# --- git.py -----------------------------------------------------------------------------


async def test_run_git_raises_git_error_with_exit_code_and_stderr(tmp_path: Path) -> None:
    """A failing command raises GitError carrying the code and git's message; check=False
    returns them instead."""
    with pytest.raises(GitError) as caught:
        await run_git(["rev-parse", "--verify", "no-such-ref"], cwd=tmp_path)
    assert caught.value.code == 128
    assert "not a git repository" in caught.value.stderr
    result = await run_git(["rev-parse", "--verify", "no-such-ref"], cwd=tmp_path, check=False)
    assert result.code == 128


async def test_run_git_ignores_inherited_git_environment(
    origin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIT_DIR / GIT_CONFIG_PARAMETERS in the service's environment never redirect zloth's git."""
    monkeypatch.setenv("GIT_DIR", "/nonexistent")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'user.name'='evil'")
    head = await run_git(["symbolic-ref", "HEAD"], cwd=origin)
    assert head.stdout.strip() == "refs/heads/main"
    ident = await run_git(["var", "GIT_COMMITTER_IDENT"], cwd=origin)
    assert ident.stdout.startswith("zloth <zloth@localhost>")


async def test_run_git_kills_git_at_its_deadline(tmp_path: Path) -> None:
    """Past the timeout GitTimeout is raised promptly and git's whole process group is
    killed (here the `sleep` an alias started), not just git."""
    pid_file = tmp_path / "pid"
    alias = f"alias.slow=!echo $$ > {pid_file}; exec sleep 30"
    async with asyncio.timeout(5):
        with pytest.raises(GitTimeout):
            await run_git(["-c", alias, "slow"], timeout=0.5)
        pid = int(pid_file.read_text())
        while _running(pid):  # polled: another process's death sends no event
            await asyncio.sleep(0.01)


def _running(pid: int) -> bool:
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text()  # a zombie is dead
    except FileNotFoundError:
        return False


# --- mirrors.py -------------------------------------------------------------------------


async def test_mirror_is_cloned_once_and_reused(mirrors: MirrorCache, origin: Path) -> None:
    """A second ensure() on a fresh mirror neither clones nor fetches."""
    first = await mirrors.ensure(REPO, str(origin), None)
    second = await mirrors.ensure(REPO, str(origin), "main")
    assert first == second
    assert (mirrors.clones, mirrors.fetches) == (1, 0)
    assert await default_branch(first) == "main"
    assert await resolve(first, "main") == git("rev-parse", "main", cwd=origin).strip()
    assert git("config", "--bool", "gc.auto", cwd=first).strip() == "false"


async def test_two_caches_on_one_host_share_one_clone(tmp_path: Path, origin: Path) -> None:
    """Two processes' caches on one root (the flock, not the asyncio.Lock) clone once."""
    a = MirrorCache(tmp_path / "mirrors", refresh_seconds=3600)
    b = MirrorCache(tmp_path / "mirrors", refresh_seconds=3600)
    paths = await asyncio.gather(*(cache.ensure(REPO, str(origin), None) for cache in (a, b) * 10))
    assert len(set(paths)) == 1
    assert a.clones + b.clones == 1
    assert a.fetches + b.fetches == 0


async def test_missing_ref_triggers_a_fetch(
    mirrors: MirrorCache, factory: WorkspaceFactory, origin: Path
) -> None:
    """A fresh mirror is fetched when the wanted ref is not in it yet (a new push)."""
    await _create(factory, origin, "run1")
    new_sha = add_commit(origin, {"docs/new.md": "new\n"}, "feature work", branch="feature")
    ws = await _create(factory, origin, "run2", base_ref="feature")
    assert (mirrors.clones, mirrors.fetches) == (1, 1)
    assert ws.base_sha == new_sha
    assert ws.base_ref == "feature"
    assert (Path(ws.path) / "docs/new.md").read_text() == "new\n"


async def test_stale_mirror_is_fetched_and_fresh_one_is_not(tmp_path: Path, origin: Path) -> None:
    """Within refresh_seconds the mirror is used as is; after that it is fetched."""
    now = [1000.0]
    mirrors = MirrorCache(tmp_path / "mirrors", refresh_seconds=30, clock=lambda: now[0])
    mirror = await mirrors.ensure(REPO, str(origin), None)
    old = await resolve(mirror, "main")
    new = add_commit(origin, {"README.md": "changed\n"}, "upstream change")
    now[0] += 29
    await mirrors.ensure(REPO, str(origin), None)
    assert (mirrors.fetches, await resolve(mirror, "main")) == (0, old)
    now[0] += 2
    await mirrors.ensure(REPO, str(origin), None)
    assert (mirrors.fetches, await resolve(mirror, "main")) == (1, new)


async def test_unknown_base_ref_fails_after_one_fetch(
    mirrors: MirrorCache, factory: WorkspaceFactory, origin: Path
) -> None:
    """A base_ref the mirror lacks costs one fetch; if upstream lacks it too it is an
    UnknownRefError, and no workspace is left behind."""
    await mirrors.ensure(REPO, str(origin), None)
    with pytest.raises(UnknownRefError):
        await _create(factory, origin, "run1", base_ref="no-such-branch")
    assert (mirrors.clones, mirrors.fetches) == (1, 1)
    assert not (factory.root / "run1").exists()


async def test_partial_mirror_fetches_the_blobs_a_workspace_needs(tmp_path: Path) -> None:
    """With `--filter=blob:none` the mirror holds no blob until a workspace needs one; then
    the base tree's blobs come in one fetch, older versions stay out."""
    origin = make_origin(tmp_path / "upstream", commits=4)
    git("config", "uploadpack.allowFilter", "true", cwd=origin)
    mirrors = MirrorCache(tmp_path / "mirrors", refresh_seconds=3600, blob_filter="blob:none")
    factory = WorkspaceFactory(mirrors, tmp_path / "workspaces")
    # file://: git ignores --filter when it clones a plain local path
    ws = await factory.create("run1", REPO, f"file://{origin}", None, "zloth/run1")
    assert _files(Path(ws.path)) == set(origin_files())
    assert git("status", "--porcelain", cwd=Path(ws.path)) == ""
    mirror = mirrors.path_for(REPO)
    missing = git("rev-list", "--objects", "--missing=print", "--all", cwd=mirror,
                  env={"GIT_NO_LAZY_FETCH": "1"})
    assert [line for line in missing.splitlines() if line.startswith("?")]  # old versions
    assert "?" not in git("rev-list", "--objects", "--missing=print", "main^{tree}",
                          cwd=mirror, env={"GIT_NO_LAZY_FETCH": "1"})


# --- workspaces.py: create --------------------------------------------------------------


async def test_twenty_concurrent_creates_share_one_clone_and_copy_no_objects(
    mirrors: MirrorCache, factory: WorkspaceFactory, origin: Path
) -> None:
    """20 runs at once: one mirror clone, 20 branches, no objects copied, fsck clean."""
    workspaces = await asyncio.gather(*(_create(factory, origin, f"run{i:02d}") for i in range(20)))
    assert (mirrors.clones, mirrors.fetches) == (1, 0)
    mirror = mirrors.path_for(REPO)
    git("fsck", "--strict", "--no-progress", cwd=mirror)
    expected = set(origin_files())
    for ws in workspaces:
        path = Path(ws.path)
        assert git("symbolic-ref", "--short", "HEAD", cwd=path).strip() == ws.branch
        assert git("status", "--porcelain", cwd=path) == ""
        assert _files(path) == expected
        objects = path / ".git" / "objects"
        stored = {p.relative_to(objects).as_posix() for p in objects.rglob("*") if p.is_file()}
        assert stored == {"info/alternates"}
        alternates = (objects / "info" / "alternates").read_text().strip()
        assert Path(alternates).resolve() == (mirror / "objects").resolve()
        git("fsck", "--strict", "--no-progress", cwd=path)
    assert len({ws.branch for ws in workspaces}) == 20
    assert {ws.base_sha for ws in workspaces} == {git("rev-parse", "main", cwd=origin).strip()}


async def test_create_is_idempotent(factory: WorkspaceFactory, origin: Path) -> None:
    """A redelivered create returns the same workspace untouched (the agent's file stays)."""
    first = await _create(factory, origin)
    (Path(first.path) / "agent.txt").write_text("work in progress")
    again = await _create(factory, origin)
    assert again == first
    assert (Path(first.path) / "agent.txt").exists()


async def test_broken_or_half_made_workspace_is_rebuilt(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """A directory in the way, or a workspace whose .git is gone, is replaced by a good one."""
    (factory.root / "run1").mkdir(parents=True)
    (factory.root / "run1" / "junk").write_text("half made")
    ws = await _create(factory, origin)
    assert not (Path(ws.path) / "junk").exists()
    assert _files(Path(ws.path)) == set(origin_files())
    shutil.rmtree(Path(ws.path) / ".git")
    again = await _create(factory, origin)
    assert git("symbolic-ref", "--short", "HEAD", cwd=Path(again.path)).strip() == "zloth/run1"
    assert not any(p.name.startswith(".tmp-") for p in factory.root.iterdir())


async def test_sparse_checkout_holds_only_the_requested_dir(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """Cone mode: the requested directory plus top-level files, nothing else."""
    ws = await _create(factory, origin, sparse_paths=["docs"])
    present = _files(Path(ws.path))
    expected = {p for p in origin_files() if p.startswith("docs/") or "/" not in p}
    assert present == expected
    assert any(p.startswith("docs/") for p in present)


async def test_commit_in_sparse_workspace_keeps_unchecked_out_files(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """In a sparse workspace, files outside the cone are not committed as deleted, and a
    file the agent adds outside the cone is committed."""
    ws = await _create(factory, origin, sparse_paths=["docs"])
    path = Path(ws.path)
    (path / "docs/file02.txt").write_text("edited\n")
    (path / "src").mkdir()
    (path / "src/added.py").write_text("x = 1\n")
    result = await factory.commit(path, ws.base_sha, "msg", "run1")
    changes = sorted((c.path, c.status) for c in result.files_changed)
    assert changes == [("docs/file02.txt", "M"), ("src/added.py", "A")]


async def test_bad_inputs_are_refused(factory: WorkspaceFactory, origin: Path) -> None:
    """Path-like run ids, option-like branches and escaping sparse paths are ValueErrors."""
    with pytest.raises(ValueError, match="run id"):
        await _create(factory, origin, "../evil")
    with pytest.raises(ValueError, match="branch"):
        await _create(factory, origin, "run1", branch="-evil")
    with pytest.raises(ValueError, match="relative path"):
        await _create(factory, origin, "run1", sparse_paths=["../outside"])


# --- workspaces.py: commit and reset ----------------------------------------------------


def _agent_edits(path: Path) -> None:
    (path / "README.md").write_text("# rewritten\n")
    (path / "src/app/new.py").write_text("print('new')\n")
    (path / "docs/file02.txt").unlink()
    (path / "assets/logo.bin").write_bytes(b"\0binary\0" * 10)
    (path / ".zloth-summary.md").write_text("I did things")
    (path / ".env").write_text("SECRET=1\n")
    (path / "config").mkdir()
    (path / "config/.env.local").write_text("SECRET=2\n")
    (path / "server.pem").write_text("-----BEGIN-----\n")


async def test_commit_makes_one_commit_with_trailer(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """One commit on base_sha with the run trailer; secrets and the summary stay out."""
    ws = await _create(factory, origin)
    path = Path(ws.path)
    _agent_edits(path)
    result = await factory.commit(path, ws.base_sha, "Rewrite the readme", "run1")
    assert result.commit_sha is not None
    assert git("rev-parse", "HEAD", cwd=path).strip() == result.commit_sha
    assert git("show", "-s", "--format=%P", result.commit_sha, cwd=path).split() == [ws.base_sha]
    message = git("show", "-s", "--format=%B", result.commit_sha, cwd=path)
    assert message.startswith("Rewrite the readme\n\n")
    trailer = git("show", "-s", "--format=%(trailers:key=Zloth-Run,valueonly)", "HEAD", cwd=path)
    assert trailer.strip() == "run1"
    assert git("show", "-s", "--format=%an <%ae>", "HEAD", cwd=path).strip() == (
        "zloth <zloth@localhost>"
    )
    tree = set(git("ls-tree", "-r", "--name-only", "HEAD", cwd=path).split())
    assert {".env", "config/.env.local", "server.pem", ".zloth-summary.md"}.isdisjoint(tree)
    assert "src/app/new.py" in tree
    assert "docs/file02.txt" not in tree
    assert result.rejected_paths == [".env", "config/.env.local", "server.pem"]
    changes = {c.path: (c.status, c.added, c.removed) for c in result.files_changed}
    assert changes == {
        "README.md": ("M", 1, 11),
        "src/app/new.py": ("A", 1, 0),
        "docs/file02.txt": ("D", 0, 11),
        BINARY_FILE: ("M", 0, 0),
    }
    assert "+print('new')" in result.diff
    assert "SECRET" not in result.diff
    assert "Binary files" in result.diff
    assert not result.diff_truncated
    assert not (path / ".zloth-summary.md").exists()


async def test_commit_is_idempotent(factory: WorkspaceFactory, origin: Path) -> None:
    """A redelivered commit returns the same commit and result without a new commit."""
    ws = await _create(factory, origin)
    path = Path(ws.path)
    _agent_edits(path)
    first = await factory.commit(path, ws.base_sha, "msg", "run1")
    second = await factory.commit(path, ws.base_sha, "msg", "run1")
    assert second == first
    assert git("rev-list", "--count", f"{ws.base_sha}..HEAD", cwd=path).strip() == "1"


async def test_commit_with_nothing_changed_returns_none(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """No change (a summary file alone does not count) means no commit and an empty diff."""
    ws = await _create(factory, origin)
    path = Path(ws.path)
    (path / ".zloth-summary.md").write_text("nothing to do")
    result = await factory.commit(path, ws.base_sha, "msg", "run1")
    assert (result.commit_sha, result.diff, result.files_changed) == (None, "", [])
    assert git("rev-parse", "HEAD", cwd=path).strip() == ws.base_sha


async def test_commit_with_only_a_secret_is_rejected_and_empty(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """A secret alone is reported as rejected and makes no commit."""
    ws = await _create(factory, origin)
    path = Path(ws.path)
    (path / "id_rsa").write_text("key")
    result = await factory.commit(path, ws.base_sha, "msg", "run1")
    assert (result.commit_sha, result.rejected_paths) == (None, ["id_rsa"])


async def test_long_diff_is_truncated_on_a_line(factory: WorkspaceFactory, origin: Path) -> None:
    """The diff is cut to max_diff_bytes at a line end and flagged; files_changed is whole."""
    ws = await _create(factory, origin)
    path = Path(ws.path)
    (path / "big.txt").write_text("".join(f"line {i}\n" for i in range(5000)))
    result = await factory.commit(path, ws.base_sha, "msg", "run1", max_diff_bytes=1000)
    assert result.diff_truncated
    assert 0 < len(result.diff.encode()) <= 1000
    assert result.diff.endswith("\n")
    assert [(c.path, c.added) for c in result.files_changed] == [("big.txt", 5000)]


async def test_agent_commits_become_one_zloth_commit(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """Commits the agent made itself (one forging zloth's trailer, with a secret) are folded
    into one zloth commit on base_sha, and the secret is still rejected."""
    ws = await _create(factory, origin)
    path = Path(ws.path)
    (path / "a.txt").write_text("a\n")
    git("add", "a.txt", cwd=path)
    git("commit", "-q", "-m", "agent commit", cwd=path)
    (path / ".env").write_text("SECRET=1\n")
    git("add", "-f", ".env", cwd=path)
    git("commit", "-q", "-m", "forged\n\nZloth-Run: run1", cwd=path)
    forged = git("rev-parse", "HEAD", cwd=path).strip()
    (path / "b.txt").write_text("b\n")
    result = await factory.commit(path, ws.base_sha, "msg", "run1")
    assert result.commit_sha not in (None, forged)
    assert git("show", "-s", "--format=%P", "HEAD", cwd=path).split() == [ws.base_sha]
    assert sorted(c.path for c in result.files_changed) == ["a.txt", "b.txt"]
    assert result.rejected_paths == [".env"]


async def test_reset_discards_everything_the_agent_did(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """After reset the run's branch is at base_sha with a clean tree, ignored files gone."""
    ws = await _create(factory, origin)
    path = Path(ws.path)
    _agent_edits(path)
    (path / ".gitignore").write_text("build/\n")
    (path / "build").mkdir()
    (path / "build/out.o").write_text("obj")
    git("add", "README.md", cwd=path)
    git("commit", "-q", "-m", "agent", cwd=path)
    git("checkout", "-q", "-b", "elsewhere", cwd=path)
    await factory.reset(path, ws.base_sha)
    assert git("symbolic-ref", "--short", "HEAD", cwd=path).strip() == ws.branch
    assert git("rev-parse", "HEAD", cwd=path).strip() == ws.base_sha
    assert git("status", "--porcelain", "--ignored", cwd=path) == ""
    assert _files(path) == set(origin_files())


async def test_commit_after_reset_commits_again(factory: WorkspaceFactory, origin: Path) -> None:
    """reset() forgets zloth's earlier commit: the rerun's commit is a new one."""
    ws = await _create(factory, origin)
    path = Path(ws.path)
    (path / "x.txt").write_text("first\n")
    first = await factory.commit(path, ws.base_sha, "msg", "run1")
    await factory.reset(path, ws.base_sha)
    (path / "x.txt").write_text("second\n")
    second = await factory.commit(path, ws.base_sha, "msg", "run1")
    assert second.commit_sha not in (None, first.commit_sha)
    assert "+second" in second.diff


# --- hostility --------------------------------------------------------------------------


def _plant_hostile_git(path: Path, marker: Path) -> None:
    """Everything an agent could put in .git (and .gitattributes) to run code as zloth."""
    script = path / "evil.sh"
    script.write_text(f'#!/bin/sh\necho "$0 $*" >> {marker}\ncat\n')
    script.chmod(0o755)
    hooks = path / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for hook in (
        "pre-commit",
        "commit-msg",
        "post-commit",
        "post-checkout",
        "post-index-change",
        "reference-transaction",
        "pre-auto-gc",
    ):
        (hooks / hook).write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        (hooks / hook).chmod(0o755)
    (path / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (path / "included.cfg").write_text(f"[core]\n\tfsmonitor = {script}\n")
    with (path / ".git" / "config").open("a") as config:
        config.write(
            f"[core]\n\tfsmonitor = {script}\n\thooksPath = {hooks}\n"
            f'[filter "evil"]\n\tclean = {script} clean\n\tsmudge = {script} smudge\n'
            f'[diff "evil"]\n\ttextconv = {script}\n\tcommand = {script}\n'
            f"[diff]\n\texternal = {script}\n"
            f"[include]\n\tpath = {path / 'included.cfg'}\n"
        )
    (path / ".git" / "config.worktree").write_text(f"[core]\n\tfsmonitor = {script}\n")


async def test_hostile_git_config_and_hooks_never_run(
    factory: WorkspaceFactory, origin: Path, tmp_path: Path
) -> None:
    """Hooks, fsmonitor, filters, diff drivers the agent planted never run in create(),
    commit() or reset(), and the agent's config is gone afterwards."""
    marker = tmp_path / "pwned"
    ws = await _create(factory, origin)
    path = Path(ws.path)
    _plant_hostile_git(path, marker)
    (path / "README.md").write_text("changed\n")
    assert await _create(factory, origin) == ws
    result = await factory.commit(path, ws.base_sha, "msg", "run1")
    assert result.commit_sha is not None
    assert git("show", f"{result.commit_sha}:README.md", cwd=path) == "changed\n"
    await factory.reset(path, ws.base_sha)
    assert not marker.exists(), marker.read_text()
    assert "evil" not in (path / ".git" / "config").read_text()
    assert not (path / ".git" / "config.worktree").exists()


async def test_git_dir_replaced_by_a_link_is_refused(
    factory: WorkspaceFactory, origin: Path, tmp_path: Path
) -> None:
    """A .git that is no longer a directory is not operated on."""
    ws = await _create(factory, origin)
    path = Path(ws.path)
    (path / ".git").rename(tmp_path / "moved-git")
    (path / ".git").symlink_to(tmp_path / "moved-git")
    with pytest.raises(WorkspaceError, match="not a directory"):
        await factory.commit(path, ws.base_sha, "msg", "run1")
