"""What a repository `url` may be: a git URL (https, http, ssh, git, file, or scp-like
`user@host:path`), or an absolute path to a local git repository (work tree or bare).

Blocking file-system checks: call `check_repo_url` in a thread.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

_REMOTE_SCHEMES = frozenset({"https", "http", "ssh", "git"})
# git's scp-like syntax: no slash before the colon, or it is a local path.
_SCP = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(?!//)[^\s]+$")
_EXPECTED = (
    "expected a git URL (https://, http://, ssh://, git://, file://, user@host:path)"
    " or an absolute path to a local git repository"
)


class RepoUrlError(ValueError):
    pass


def check_repo_url(raw: str) -> tuple[str, str | None]:
    """The normalised url and, for a local repository, the branch its HEAD names."""
    url = raw.strip()
    if not url.isprintable() or any(ch.isspace() for ch in url):
        raise RepoUrlError("url must not contain whitespace or control characters")
    if url.startswith("-"):  # would be read as an option by git
        raise RepoUrlError(f"url must not start with '-': {_EXPECTED}")
    if url.startswith("/"):
        path, branch = _local_repo(url)
        return str(path), branch
    if _SCP.match(url):
        return url, None
    parts = urlsplit(url)
    if parts.scheme == "file":
        path, branch = _local_repo(unquote(parts.path))
        return f"file://{path}", branch
    if parts.scheme in _REMOTE_SCHEMES:
        if not parts.hostname or parts.path.strip("/") == "":
            raise RepoUrlError(f"{parts.scheme} URL needs a host and a repository path")
        if parts.password:
            raise RepoUrlError("credentials in the url are not accepted (configure a token)")
        return url.rstrip("/"), None
    raise RepoUrlError(_EXPECTED)


def _local_repo(text: str) -> tuple[Path, str | None]:
    path = Path(os.path.normpath(text))
    if not path.is_absolute():
        raise RepoUrlError(f"a local repository path must be absolute: {_EXPECTED}")
    if not path.is_dir():
        raise RepoUrlError(f"no such directory: {path}")
    git_dir = _git_dir(path)
    if git_dir is None:
        raise RepoUrlError(f"not a git repository (no .git, nor a bare repository): {path}")
    return path, _head_branch(git_dir)


def _git_dir(path: Path) -> Path | None:
    dot_git = path / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # a linked work tree or submodule: "gitdir: <path>"
        text = dot_git.read_text(errors="replace").strip()
        if text.startswith("gitdir:"):
            target = Path(text.removeprefix("gitdir:").strip())
            target = target if target.is_absolute() else path / target
            return target if target.is_dir() else None
        return None
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        return path
    return None


def _head_branch(git_dir: Path) -> str | None:
    try:
        head = (git_dir / "HEAD").read_text(errors="replace").strip()
    except OSError:
        return None
    prefix = "ref: refs/heads/"
    return head.removeprefix(prefix) if head.startswith(prefix) else None
