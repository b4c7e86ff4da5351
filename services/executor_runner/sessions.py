"""An agent's session state between the runs of one task: copied out of the run's
isolated HOME after the run, and into the next run's fresh HOME when it resumes.

Kept per (task, executor) on this runner's disk. A follow-up is pinned to its previous
run's host (schemas/hosts.py), so the state is here; when that host is gone the scheduler
re-issues the follow-up elsewhere without a session to resume."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

__all__ = ["restore_state", "save_state", "state_dir"]


def state_dir(root: Path, task_id: str, executor: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", task_id).lstrip(".") or "task"
    return root / safe / executor


def save_state(home: Path, store: Path, paths: tuple[str, ...]) -> None:
    """Replace the stored state with `paths` (HOME-relative) as the run left them.
    Symlinks are copied as links, never followed: the agent wrote these trees."""
    for rel in paths:
        source, target = home / rel, store / rel
        if not source.is_dir() or source.is_symlink():
            continue
        staging = target.with_name(target.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging, symlinks=True)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)


def restore_state(store: Path, home: Path, paths: tuple[str, ...]) -> bool:
    """Copy the stored state into a fresh HOME; False when there is none."""
    found = False
    for rel in paths:
        source = store / rel
        if source.is_dir():
            shutil.copytree(source, home / rel, symlinks=True, dirs_exist_ok=True)
            found = True
    return found
