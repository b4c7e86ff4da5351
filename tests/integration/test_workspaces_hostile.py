"""A hostile agent against the mirror every run shares: what it can do with git from its
workspace never changes the mirror or another run.

Out of reach of workspace-manager and so not tested here: an agent running as the same
(root) user writing the mirror's files by path; that takes the runner's sandbox (another
uid, or the mirrors root mounted read-only in the agent's mount namespace).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.workspace_manager.mirrors import MirrorCache
from services.workspace_manager.workspaces import Workspace, WorkspaceFactory
from tests.support.gitrepo import git, make_origin

REPO = "acme/widgets"


@pytest.fixture
def factory(tmp_path: Path) -> WorkspaceFactory:
    return WorkspaceFactory(MirrorCache(tmp_path / "mirrors", refresh_seconds=3600),
                            tmp_path / "workspaces")


def _fingerprint(repo: Path) -> tuple[str, dict[str, str]]:
    """`repo`'s refs (refs/zloth/ aside: zloth's own) and the hash of every object file."""
    refs = git("for-each-ref", "--format=%(objectname) %(refname)", cwd=repo)
    kept = "".join(line + "\n" for line in refs.splitlines() if " refs/zloth/" not in line)
    objects = {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted((repo / "objects").rglob("*")) if p.is_file()}
    return kept, objects


async def test_agent_git_cannot_write_the_mirror_or_another_run(
    factory: WorkspaceFactory, tmp_path: Path
) -> None:
    """From its workspace the agent pushes into the mirror (refused), runs gc / repack /
    prune --now, rewrites alternates to another run's objects and points origin at the
    mirror: the mirror's refs and objects are unchanged, the other run is fsck-clean, and
    zloth's commit afterwards is normal and lands only under refs/zloth/."""
    origin = make_origin(tmp_path / "upstream")
    ws: list[Workspace] = [
        await factory.create(r, REPO, str(origin), None, f"zloth/{r}") for r in ("evil", "other")
    ]
    evil, other = Path(ws[0].path), Path(ws[1].path)
    mirror = factory.mirrors.path_for(REPO)
    before = _fingerprint(mirror)
    (evil / "README.md").write_text("evil\n")
    git("commit", "-qam", "agent commit", cwd=evil)
    with pytest.raises(AssertionError, match="read-only"):
        git("push", str(mirror), "HEAD:refs/heads/main", cwd=evil)
    with pytest.raises(AssertionError, match="read-only"):
        git("push", "--force", str(mirror), "HEAD:refs/heads/new-branch", cwd=evil)
    for args in (["gc", "--prune=now", "--aggressive", "--quiet"], ["repack", "-a", "-d", "-q"],
                 ["prune", "--expire=now"]):
        git(*args, cwd=evil)
    alternates = evil / ".git" / "objects" / "info" / "alternates"
    alternates.write_text(f"{other / '.git' / 'objects'}\n{mirror / 'objects'}\n")
    git("config", "remote.origin.url", str(mirror), cwd=evil)
    git("config", "remote.origin.pushurl", str(mirror), cwd=evil)
    assert _fingerprint(mirror) == before
    git("fsck", "--strict", "--no-progress", cwd=other)
    result = await factory.commit(evil, ws[0].base_sha, "zloth's commit", "evil")
    assert result.commit_sha is not None
    refs, objects = _fingerprint(mirror)  # zloth kept its commit: objects added, none changed
    assert refs == before[0]
    assert objects.items() >= before[1].items()
    assert git("rev-parse", "refs/zloth/runs/evil", cwd=mirror).strip() == result.commit_sha
    assert alternates.read_text().strip() == str((mirror / "objects").absolute())
    assert str(mirror) not in (evil / ".git" / "config").read_text()
    git("fsck", "--strict", "--no-progress", cwd=mirror)
