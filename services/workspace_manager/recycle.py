"""Turn a finished run's workspace into a warm one, writing only the files that differ.

Nothing of the previous run may survive: its `.git` is thrown away whole (hooks, config,
branches, objects, index) and made again as for a fresh workspace (gitdirs.py); the
working tree is scrubbed of what git cannot see (hard links to files elsewhere, odd
modes, special files, files of another owner); the new index is built from the target
tree and every file is re-hashed rather than trusted by its stat data (an agent can
forge an index and restore a file's mtime); then git writes what differs and `clean -ffdx`
removes everything untracked, ignored files and nested repositories included.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
import time
from pathlib import Path

from services.core.git import run_git
from services.workspace_manager.fsops import remove_tree
from services.workspace_manager.gitdirs import checkout, init_gitdir

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
_EXEC_MODE = 0o777 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK


class RecycleError(Exception):
    """The workspace could not be brought back to a clean state (discard it instead)."""


async def recycle(path: Path, mirror: Path, url: str, sha: str, trash: Path) -> None:
    """Make `path` (a finished workspace no agent uses any more) a clean checkout of `sha`
    with a detached HEAD and a `.git` like a fresh one's."""
    old_git = path / ".git"
    if old_git.is_symlink() or old_git.exists():
        trash.mkdir(parents=True, exist_ok=True)
        moved = trash / f"git-{secrets.token_hex(6)}"
        old_git.rename(moved)  # the link or directory itself, never what a link points to
        await remove_tree(moved)
    await asyncio.to_thread(scrub, path)
    init_gitdir(path, mirror, url)
    await run_git(["read-tree", sha], cwd=path)
    # Compares the content of every file with the tree (the new index has no stat data):
    # files that match keep their place, the others are rewritten by the checkout below.
    await run_git(["update-index", "-q", "--refresh"], cwd=path, check=False)
    await checkout(path, sha, None)
    await run_git(["clean", "-ffdxq"], cwd=path)
    await verify_clean(path)


async def verify_clean(path: Path) -> None:
    status = await run_git(
        ["status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=path
    )
    if status.stdout.strip():
        raise RecycleError(f"{path} is not clean after recycling: {status.stdout[:500]!r}")


async def settle(path: Path, since: float) -> None:
    """Re-stat the index once the files are older than it (racy-git: entries written in
    the same second as their files are re-hashed by every later git command)."""
    wait = since + 1.05 - time.time()
    if wait > 0:
        await asyncio.sleep(wait)
    await run_git(["update-index", "-q", "--refresh"], cwd=path, check=False)


def scrub(root: Path) -> None:
    """Remove or fix in the working tree what a checkout would not: files hard-linked with
    files elsewhere (a later in-place write would reach them), special files, files of
    another owner, and modes other than a fresh checkout's."""
    uid = os.getuid()
    os.chmod(root, _DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in list(dirnames):
            target = here / name
            st = target.lstat()
            if stat.S_ISLNK(st.st_mode):
                target.unlink()  # git re-creates a tracked symlink; an untracked one must go
                dirnames.remove(name)
            elif st.st_uid != uid or stat.S_IMODE(st.st_mode) != _DIR_MODE:
                os.chmod(target, _DIR_MODE)
                if st.st_uid != uid:
                    os.chown(target, uid, os.getgid())
        for name in filenames:
            _scrub_file(here / name, uid)


def _scrub_file(target: Path, uid: int) -> None:
    st = target.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1 or st.st_uid != uid:
        target.unlink()
    elif mode not in (_FILE_MODE, _EXEC_MODE):
        os.chmod(target, _EXEC_MODE if mode & 0o100 else _FILE_MODE)
