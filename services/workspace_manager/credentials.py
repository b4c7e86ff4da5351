"""Credentials for upstream git operations, given to one git command at a time.

A URL's `user:password@` part and the configured per-host tokens become an
`http.<origin>.extraHeader` passed through `GIT_CONFIG_COUNT` variables: nothing is written
into any `.git/config`, nothing appears on a command line (`ps` would show it), and the
header only goes to the host it belongs to.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit


def without_credentials(url: str) -> str:
    """`url` without its user-info part (what may be stored and shown)."""
    if "://" not in url:
        return url  # a local path or scp-like `git@host:repo`, which holds no secret
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def auth_env(url: str, tokens: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment that authenticates git to `url`'s host over HTTP(S), or {}.

    Credentials in the URL win; otherwise `tokens[host]` is used as a GitHub-style
    `x-access-token` password.
    """
    if "://" not in url:
        return {}
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return {}
    if parts.username is not None or parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
    elif tokens and parts.hostname in tokens:
        user, password = "x-access-token", tokens[parts.hostname]
    else:
        return {}
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    port = f":{parts.port}" if parts.port else ""
    scope = f"{parts.scheme}://{parts.hostname}{port}/"
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.{scope}.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }
