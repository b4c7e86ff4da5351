"""Hosts as NATS subject tokens.

A run's workspace lives on one host's disk, so the commands that use it after it is made
(the agent's run, zloth's commit) go to that host only: `zloth.cmd.exec.<executor>.<host>.
<run>` and `zloth.cmd.ws.commit.<host>.<run>`, each consumed by a durable consumer of that
host (shared by every replica there). Preparing a workspace goes to any host
(`zloth.cmd.ws.prepare.<run>`) unless it is pinned (`zloth.cmd.ws.prepare.<host>.<run>`):
the workspace-manager that takes it decides the host, and says so in WorkspaceReady.
"""

from __future__ import annotations

import re
import socket

__all__ = ["ANY_HOST", "host_token"]

# The host token of a command whose workspace host is not known (a workspace-manager that
# did not say): no consumer takes it, so the run fails by the scheduler's timeouts rather
# than an agent running where its workspace is not.
ANY_HOST = "_"

_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_-]+")


def host_token(name: str = "") -> str:
    """`name` (default: this machine's host name) as a subject token: no dots, spaces or
    wildcards, at most 64 characters, never empty."""
    token = _NOT_TOKEN.sub("-", name or socket.gethostname()).strip("-")[:64]
    return token or "host"
