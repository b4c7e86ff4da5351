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
    out.write(f"\n{'executor':<16}{'installed':>10}{'in use':>10}  version\n")
    in_use = status.get("executors_in_use", {})
    for name, info in sorted(status.get("executors", {}).items()):
        installed = "yes" if info.get("installed", True) else "no"
        use = in_use.get(name)
        used = f"{use['running']}/{use['concurrency']}" if use else "-"
        out.write(f"{name:<16}{installed:>10}{used:>10}  {info.get('version') or ''}\n")
    breakers = status.get("breakers", {})
    out.write("\nLLM breakers  " + ("  ".join(f"{provider} {b['state']}" for provider, b
                                             in sorted(breakers.items())) or "all closed")
              + "\n")
    out.write(f"\n{'host':<24}{'workspaces':>12}{'ws bytes':>14}{'mirror bytes':>14}"
              f"{'budget':>14}\n")
    for host, disk in sorted(status.get("disk", {}).items()):
        count = sum((disk.get("workspaces") or {}).values())
        out.write(f"{host:<24}{count:>12}{_size(disk.get('workspaces_bytes')):>14}"
                  f"{_size(disk.get('mirrors_bytes')):>14}"
                  f"{_size(disk.get('budget_bytes') or None):>14}\n")
    out.write(f"\n{'service instance':<44}{'age':>6}  health\n")
    now = time.time()
    for key, report in sorted(status.get("services", {}).items()):
        age = f"{now - float(report.get('at', now)):.0f}s"
        health = report.get("health", {})
        flags = " ".join(f"{k}={v}" for k, v in health.items() if not isinstance(v, dict))
        out.write(f"{key:<44}{age:>6}  {flags}\n")


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
