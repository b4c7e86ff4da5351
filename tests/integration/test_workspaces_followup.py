"""Follow-up runs and pushes against real git: the previous run's branch continued, synced
with the remote branch, the base merged in; conflicts failed or handed to the agent;
pushes that never lose a commit someone else pushed."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.workspace_manager.commits import ConflictMarkersError
from services.workspace_manager.gc import Janitor
from services.workspace_manager.merging import MergeConflict
from services.workspace_manager.mirrors import MirrorCache
from services.workspace_manager.workspaces import Workspace, WorkspaceFactory
from tests.support.gitrepo import add_commit, git, make_origin

REPO = "acme/widgets"


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_origin(tmp_path / "upstream")


@pytest.fixture
def factory(tmp_path: Path) -> WorkspaceFactory:
    # refresh 0: every create sees upstream as it is now (these tests push to it)
    return WorkspaceFactory(MirrorCache(tmp_path / "mirrors", refresh_seconds=0),
                            tmp_path / "workspaces")


async def _run(
    factory: WorkspaceFactory, origin: Path, run_id: str, edits: dict[str, str],
    previous: str | None = None,
) -> tuple[Workspace, str | None]:
    """A whole run: workspace, the agent's edits, zloth's commit; (workspace, commit)."""
    ws = await factory.create(run_id, REPO, str(origin), None, f"zloth/{run_id}",
                              previous_run_id=previous)
    for name, text in edits.items():
        (Path(ws.path) / name).write_text(text)
    result = await factory.commit(Path(ws.path), ws.base_sha, f"run {run_id}", run_id)
    return ws, result.commit_sha


def _parents(path: Path, sha: str) -> list[str]:
    return git("show", "-s", "--format=%P", sha, cwd=path).split()


async def test_follow_up_continues_the_branch_and_merges_the_base(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """The follow-up works on the first run's branch from its commit, with what upstream
    added to main since merged in by zloth; its own commit sits on that merge."""
    _, first_sha = await _run(factory, origin, "run1", {"notes.md": "one\n"})
    upstream = add_commit(origin, {"docs/upstream.md": "up\n"}, "upstream work")
    second, second_sha = await _run(factory, origin, "run2", {"notes.md": "two\n"},
                                    previous="run1")
    path = Path(second.path)
    assert second.branch == "zloth/run1"
    assert _parents(path, second.base_sha) == [first_sha, upstream]
    assert second_sha is not None and _parents(path, second_sha) == [second.base_sha]
    assert (path / "docs/upstream.md").read_text() == "up\n"
    assert git("show", f"{second_sha}:notes.md", cwd=path) == "two\n"


async def test_follow_up_finds_the_commit_after_the_first_workspace_is_gone(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """zloth's commit is kept in the mirror: with the first run's workspace removed by GC,
    the follow-up still starts from it."""
    _, first_sha = await _run(factory, origin, "run1", {"notes.md": "one\n"})
    await factory.finish("run1")
    assert await Janitor(factory, retention_seconds=0).discard("run1", "test") is not None
    assert not (factory.root / "run1").exists()
    second, _ = await _run(factory, origin, "run2", {}, previous="run1")
    assert second.base_sha == first_sha
    assert (Path(second.path) / "notes.md").read_text() == "one\n"


async def test_follow_up_conflicting_with_the_base_fails_listing_the_files(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """With the "fail" policy a conflict with main names the files; nothing is left behind."""
    await _run(factory, origin, "run1", {"README.md": "ours\n", "docs/file02.txt": "ours\n"})
    add_commit(origin, {"README.md": "theirs\n", "docs/file02.txt": "theirs\n"}, "clash")
    with pytest.raises(MergeConflict) as caught:
        await factory.create("run2", REPO, str(origin), None, "zloth/run2",
                             previous_run_id="run1")
    assert caught.value.files == ["README.md", "docs/file02.txt"]
    assert "README.md" in str(caught.value)
    assert not (factory.root / "run2").exists()
    assert not [p for p in factory.root.iterdir() if p.name.startswith(".tmp-")]


async def test_conflict_handed_to_the_agent_must_be_resolved_before_commit(
    tmp_path: Path, origin: Path
) -> None:
    """With the "agent" policy the workspace holds the conflict; a commit with markers left
    fails, a resolved one is a merge commit of the branch and main."""
    factory = WorkspaceFactory(MirrorCache(tmp_path / "mirrors", refresh_seconds=0),
                               tmp_path / "workspaces", conflicts="agent")
    _, first_sha = await _run(factory, origin, "run1", {"README.md": "ours\n"})
    theirs = add_commit(origin, {"README.md": "theirs\n"}, "clash")
    ws = await factory.create("run2", REPO, str(origin), None, "zloth/run2",
                              previous_run_id="run1")
    path = Path(ws.path)
    assert ws.conflicts == ["README.md"]
    assert ws.base_sha == first_sha
    assert "<<<<<<< " in (path / "README.md").read_text()
    with pytest.raises(ConflictMarkersError, match=r"README\.md"):
        await factory.commit(path, ws.base_sha, "msg", "run2")
    (path / "README.md").write_text("ours and theirs\n")
    result = await factory.commit(path, ws.base_sha, "resolve", "run2")
    assert result.commit_sha is not None
    assert _parents(path, result.commit_sha) == [first_sha, theirs]
    assert git("show", f"{result.commit_sha}:README.md", cwd=path) == "ours and theirs\n"


async def test_push_merges_a_concurrent_remote_update_and_loses_nothing(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """The remote branch moves between prepare and push: the first push is refused by the
    lease, zloth fetches and merges the remote commit, and the second push carries both."""
    ws, sha = await _run(factory, origin, "run1", {"notes.md": "one\n"})
    first = await factory.push(Path(ws.path))
    assert (first.sha, first.merged) == (sha, [])
    second_ws = await factory.create("run2", REPO, str(origin), None, "zloth/run2",
                                     previous_run_id="run1")
    foreign = add_commit(origin, {"docs/theirs.md": "x\n"}, "someone else",
                         branch="zloth/run1")
    (Path(second_ws.path) / "notes.md").write_text("two\n")
    done = await factory.commit(Path(second_ws.path), second_ws.base_sha, "two", "run2")
    pushed = await factory.push(Path(second_ws.path), backoff=0)
    assert pushed.merged == [foreign]
    remote_tip = git("rev-parse", "zloth/run1", cwd=origin).strip()
    assert remote_tip == pushed.sha
    for kept in (foreign, done.commit_sha, sha):
        git("merge-base", "--is-ancestor", str(kept), remote_tip, cwd=origin)


async def test_a_retried_attempt_replaces_only_zloths_own_push(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """Attempt 2 replaces attempt 1's pushed commit (force with lease: zloth's own), but
    when someone pushed on top of it meanwhile, attempt 3 merges their commit instead of
    dropping it."""
    ws, c1 = await _run(factory, origin, "run1", {"attempt1.md": "1\n"})
    path = Path(ws.path)
    await factory.push(path)
    assert git("rev-parse", "zloth/run1", cwd=origin).strip() == c1
    await factory.reset(path, ws.base_sha)
    (path / "attempt2.md").write_text("2\n")
    c2 = (await factory.commit(path, ws.base_sha, "again", "run1")).commit_sha
    replaced = await factory.push(path)
    assert (replaced.sha, replaced.merged) == (c2, [])
    assert git("rev-parse", "zloth/run1", cwd=origin).strip() == c2
    foreign = add_commit(origin, {"docs/theirs.md": "x\n"}, "on top", branch="zloth/run1")
    await factory.reset(path, ws.base_sha)
    (path / "attempt3.md").write_text("3\n")
    c3 = (await factory.commit(path, ws.base_sha, "third", "run1")).commit_sha
    third = await factory.push(path, backoff=0)
    assert third.merged == [foreign]
    for kept in (foreign, str(c3)):
        git("merge-base", "--is-ancestor", kept, "zloth/run1", cwd=origin)


async def test_push_conflicting_with_the_remote_fails_with_the_files(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """A remote commit that conflicts with zloth's is reported with the files and stays."""
    ws, _ = await _run(factory, origin, "run1", {"notes.md": "one\n"})
    await factory.push(Path(ws.path))
    add_commit(origin, {"notes.md": "someone else's\n"}, "clash", branch="zloth/run1")
    await factory.reset(Path(ws.path), ws.base_sha)
    (Path(ws.path) / "notes.md").write_text("mine\n")
    await factory.commit(Path(ws.path), ws.base_sha, "again", "run1")
    with pytest.raises(MergeConflict) as caught:
        await factory.push(Path(ws.path), backoff=0)
    assert caught.value.files == ["notes.md"]
    assert git("show", "zloth/run1:notes.md", cwd=origin) == "someone else's\n"


async def test_an_aborted_merge_is_not_committed_as_a_merge(
    tmp_path: Path, origin: Path
) -> None:
    """When the agent aborts the merge it was handed (or it was reset away), zloth's commit
    has one parent: it never claims a merge whose changes are not in the tree."""
    factory = WorkspaceFactory(MirrorCache(tmp_path / "mirrors", refresh_seconds=0),
                               tmp_path / "workspaces", conflicts="agent")
    await _run(factory, origin, "run1", {"README.md": "ours\n"})
    add_commit(origin, {"README.md": "theirs\n"}, "clash")
    ws = await factory.create("run2", REPO, str(origin), None, "zloth/run2",
                              previous_run_id="run1")
    path = Path(ws.path)
    git("merge", "--abort", cwd=path)
    (path / "notes.md").write_text("other work\n")
    result = await factory.commit(path, ws.base_sha, "no merge", "run2")
    assert result.commit_sha is not None
    assert _parents(path, result.commit_sha) == [ws.base_sha]


async def test_follow_up_without_the_record_finds_the_branch_by_its_trailer(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """The previous run's record is on another host: its pushed branch is found in the
    mirror by the Zloth-Run trailer of its tip, and continued."""
    ws, sha = await _run(factory, origin, "run1", {"notes.md": "one\n"})
    await factory.push(Path(ws.path))
    factory.records.delete("run1")
    second = await factory.create("run2", REPO, str(origin), None, "zloth/run2",
                                  previous_run_id="run1")
    assert second.branch == "zloth/run1"
    assert second.base_sha == sha
    assert (Path(second.path) / "notes.md").read_text() == "one\n"
