"""`zloth status`: the `/v1/status` document as one screen of text."""

from __future__ import annotations

import time
from typing import Any, TextIO


def render_status(status: dict[str, Any], out: TextIO) -> None:
    out.write(f"zloth: {'OK' if status.get('ok') else 'DEGRADED'}\n\n")
    runs = status.get("runs_by_state", {})
    out.write("runs      " + ("  ".join(f"{k} {v}" for k, v in sorted(runs.items())) or "none")
              + "\n")
    out.write(f"dead letters {status.get('dead_letters', 0)}\n\n")
    out.write(f"{'stream / consumer':<34}{'msgs':>8}{'pending':>9}{'ack-pend':>9}{'redeliv':>9}\n")
    for name, stream in sorted(status.get("streams", {}).items()):
        if "error" in stream:
            out.write(f"{name:<34}  error: {stream['error']}\n")
            continue
        out.write(f"{name:<34}{stream.get('messages', 0):>8}\n")
        for durable, state in sorted(stream.get("consumers", {}).items()):
            out.write(f"  {durable:<32}{'':>8}{state['pending']:>9}{state['ack_pending']:>9}"
                      f"{state['redelivered']:>9}\n")
    out.write(f"\n{'executor':<16}{'installed':>10}{'concurrency':>13}  version\n")
    for name, info in sorted(status.get("executors", {}).items()):
        installed = "yes" if info.get("installed", True) else "no"
        out.write(f"{name:<16}{installed:>10}{info.get('concurrency', '?'):>13}"
                  f"  {info.get('version') or ''}\n")
    out.write(f"\n{'service instance':<44}{'age':>6}  health\n")
    now = time.time()
    for key, report in sorted(status.get("services", {}).items()):
        age = f"{now - float(report.get('at', now)):.0f}s"
        health = report.get("health", {})
        flags = " ".join(f"{k}={v}" for k, v in health.items() if not isinstance(v, dict))
        out.write(f"{key:<44}{age:>6}  {flags}\n")
