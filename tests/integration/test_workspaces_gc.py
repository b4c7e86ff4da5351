"""Disk budget and GC against real git: finished workspaces go oldest first (their commit
kept in the mirror), live ones never; retention; crash leftovers; mirror maintenance."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.workspace_manager.gc import Janitor
from services.workspace_manager.mirrors import MirrorCache, resolve
from services.workspace_manager.pool import WarmPool
from services.workspace_manager.workspaces import WorkspaceFactory
from tests.support.gitrepo import git, make_origin

REPO = "acme/widgets"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_origin(tmp_path / "upstream", files=40)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def factory(tmp_path: Path, clock: Clock) -> WorkspaceFactory:
    mirrors = MirrorCache(tmp_path / "mirrors", refresh_seconds=3600)
    root = tmp_path / "workspaces"
    return WorkspaceFactory(mirrors, root, pool=WarmPool(root, mirrors, size=0), clock=clock)


async def _finished_run(factory: WorkspaceFactory, origin: Path, run_id: str,
                        clock: Clock) -> str | None:
    ws = await factory.create(run_id, REPO, str(origin), None, f"zloth/{run_id}")
    (Path(ws.path) / f"{run_id}.txt").write_text("result\n")
    sha = (await factory.commit(Path(ws.path), ws.base_sha, "m", run_id)).commit_sha
    assert await factory.finish(run_id)
    clock.now += 10
    return sha


async def test_tiny_budget_removes_finished_workspaces_oldest_first_never_live_ones(
    factory: WorkspaceFactory, origin: Path, clock: Clock
) -> None:
    """Over budget: the oldest finished workspace goes, then the next while still over;
    the live one stays even when it alone exceeds the budget (reported), and every removed
    run's commit is still in the mirror."""
    shas = {run: await _finished_run(factory, origin, run, clock) for run in ("old", "new")}
    await factory.create("live", REPO, str(origin), None, "zloth/live")
    one = (await Janitor(factory, budget_bytes=1 << 40, clock=clock).sweep()).bytes // 3
    report = await Janitor(factory, budget_bytes=2 * one + one // 2, clock=clock).sweep()
    assert report.removed == {"budget": 1}
    assert not (factory.root / "old").exists() and (factory.root / "new").exists()
    report = await Janitor(factory, budget_bytes=1, clock=clock).sweep()
    assert report.removed == {"budget": 1}
    assert report.over_budget
    assert report.counts == {"active": 1, "finished": 0, "warm": 0}
    assert (factory.root / "live").is_dir()
    mirror = factory.mirrors.path_for(REPO)
    for run, sha in shas.items():
        assert await resolve(mirror, f"refs/zloth/runs/{run}") == sha
    git("fsck", "--no-progress", cwd=mirror)
    git("fsck", "--no-progress", cwd=factory.root / "live")


async def test_retention_removes_only_workspaces_finished_long_enough(
    factory: WorkspaceFactory, origin: Path, clock: Clock
) -> None:
    """Past the retention a finished workspace goes and its record stays a tombstone;
    past the record retention the tombstone and the run's ref in the mirror go too."""
    await _finished_run(factory, origin, "early", clock)
    clock.now += 100
    await _finished_run(factory, origin, "late", clock)
    report = await Janitor(factory, retention_seconds=50, clock=clock).sweep()
    assert report.removed == {"retention": 1}
    assert not (factory.root / "early").exists() and (factory.root / "late").exists()
    assert factory.records.load("early") is not None  # a tombstone for follow-ups
    clock.now += 40 * 86_400  # "early" a tombstone for 40 days; "late" removed just now
    await Janitor(factory, retention_seconds=50, record_seconds=86_400, clock=clock).sweep()
    assert factory.records.load("early") is None
    assert factory.records.load("late") is not None
    mirror = factory.mirrors.path_for(REPO)
    kept = git("for-each-ref", "--format=%(refname)", "refs/zloth/", cwd=mirror).split()
    assert kept == ["refs/zloth/runs/late"]


async def test_crash_leftovers_go_unless_someone_is_making_them(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """A `.tmp-<run>-…` whose run lock is free is a crash's leftover; a held one is a
    workspace being made right now."""
    await factory.create("run1", REPO, str(origin), None, "zloth/run1")
    (factory.root / ".tmp-dead-0000").mkdir()
    (factory.root / ".tmp-busy-0000").mkdir()
    async with factory.records.lock("busy"):
        report = await Janitor(factory).sweep()
    assert report.removed == {"orphan": 1}
    assert not (factory.root / ".tmp-dead-0000").exists()
    assert (factory.root / ".tmp-busy-0000").exists()


async def test_mirror_maintenance_keeps_what_workspaces_borrow(
    factory: WorkspaceFactory, origin: Path
) -> None:
    """gc on a mirror with many loose objects packs them; the workspaces stay fsck-clean."""
    ws = await factory.create("run1", REPO, str(origin), None, "zloth/run1")
    mirror = factory.mirrors.path_for(REPO)
    git("-c", "pack.packSizeLimit=1k", "repack", "-q", "-d", cwd=mirror)  # many packs
    await Janitor(factory).maintain_mirrors()
    packs = list((mirror / "objects" / "pack").glob("*.pack"))
    assert len(packs) <= 2
    git("fsck", "--no-progress", cwd=Path(ws.path))
