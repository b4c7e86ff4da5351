"""Read a repository's refs from its files, and check branch names, without running git.

Making a workspace of a small repository costs about as much as starting a few git
processes, so the questions asked for every workspace (the mirror's default branch, the
sha of a branch, its branches and tags) are answered from `HEAD`, the loose refs and
`packed-refs` (git's documented on-disk formats). Anything less plain (a tag, which may
need peeling, a name git would resolve elsewhere first, a sha) is left to git: callers
fall back to `git rev-parse` when these return None.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# git check-ref-format, for a name under refs/heads/.
_BAD_REF = re.compile(r"(^|/)\.|\.lock(/|$)|\.\.|[\x00-\x20\x7f~^:?*\[\\]|@\{|//|/$|^/|\.$")


class RefSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    refs: dict[str, str]  # full ref name -> sha (peeled values are not read)
    head: str | None  # the branch HEAD names (without refs/heads/), None when detached

    def branch_sha(self, name: str) -> str | None:
        """The sha of branch `name` when git would resolve `name` to it, else None."""
        if (
            name.startswith("refs/")
            or name in ("HEAD", "FETCH_HEAD", "ORIG_HEAD", "MERGE_HEAD")
            or f"refs/{name}" in self.refs
            or f"refs/tags/{name}" in self.refs
        ):
            return None
        return self.refs.get(f"refs/heads/{name}")

    def under(self, *prefixes: str) -> dict[str, str]:
        return {ref: sha for ref, sha in self.refs.items() if ref.startswith(prefixes)}


def read_refs(repo: Path) -> RefSnapshot:
    """Loose refs first, then `packed-refs` (a concurrent `pack-refs` writes the packed
    file before it deletes the loose one, so no ref is missed); loose ones win."""
    loose: dict[str, str] = {}
    base = repo / "refs"
    for dirpath, _, filenames in os.walk(base):
        for name in filenames:
            path = Path(dirpath) / name
            try:
                value = path.read_text().strip()
            except (OSError, UnicodeDecodeError):
                continue
            if _SHA.fullmatch(value):
                loose[path.relative_to(repo).as_posix()] = value
    refs: dict[str, str] = {}
    try:
        packed = (repo / "packed-refs").read_text()
    except OSError:
        packed = ""
    for line in packed.splitlines():
        sha, _, ref = line.partition(" ")
        if _SHA.fullmatch(sha) and ref.startswith("refs/"):
            refs[ref] = sha
    refs.update(loose)
    try:
        head = (repo / "HEAD").read_text().strip()
    except OSError:
        head = ""
    branch = head.removeprefix("ref: refs/heads/") if head.startswith("ref: refs/heads/") else None
    return RefSnapshot(refs=refs, head=branch)


def valid_branch(name: str) -> bool:
    """`refs/heads/<name>` passes `git check-ref-format` (and is not option-like)."""
    return bool(name) and not name.startswith("-") and name != "@" and not _BAD_REF.search(name)
