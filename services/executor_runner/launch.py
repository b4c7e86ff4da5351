"""Exec shim between the runner and an agent: in the new process, set PDEATHSIG, become a
child subreaper, apply the rlimits, then exec the agent (same pid, same environment).

A separate program rather than `preexec_fn`: Python code between fork and exec in a
threaded parent (the runner has thread pools) can deadlock the child before it ever execs.
Run as: python -I -S launch.py PARENT_PID RLIMITS_JSON -- ARGV...
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(libc: ctypes.CDLL, option: int, value: int) -> None:
    ul = ctypes.c_ulong
    libc.prctl(ctypes.c_int(option), ul(value), ul(0), ul(0), ul(0))


def main(args: list[str]) -> None:
    parent, limits, separator, argv = int(args[0]), json.loads(args[1]), args[2], args[3:]
    if separator != "--" or not argv:
        sys.stderr.write("launch: usage: PARENT_PID RLIMITS_JSON -- ARGV...\n")
        os._exit(126)
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the runner died before PDEATHSIG took effect
        os._exit(127)
    # Orphans of the agent are re-parented to it, so the runner can find them.
    _prctl(libc, PR_SET_CHILD_SUBREAPER, 1)
    for res, soft, hard in limits:
        _, current_hard = resource.getrlimit(res)
        if current_hard != resource.RLIM_INFINITY:  # only root may raise a hard limit
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(res, (soft, hard))
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: give the agent
    # the defaults any program expects (as subprocess's restore_signals does).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)  # noqa: S606  the argv list is exec-ed as given, no shell
    except OSError as exc:
        sys.stderr.write(f"launch: cannot run {argv[0]}: {exc.strerror}\n")
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
