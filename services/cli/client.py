"""The HTTP client side of the CLI: submit a task, follow its runs' logs side by side,
print each run's outcome and diffstat."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, TextIO

import httpx
import msgspec

from services.cli.sse import follow

TERMINAL = {"succeeded", "failed", "canceled"}
COLORS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[31m"]
RESET = "\033[0m"


class ApiError(Exception):
    pass


async def call(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> Any:
    response = await client.request(method, path, **kw)
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            detail = error["message"] + (f" (field: {error['field']})" if "field" in error else "")
        except (ValueError, KeyError):
            detail = response.text
        raise ApiError(f"{method} {path}: {response.status_code} {detail}")
    return response.json()


async def submit(
    client: httpx.AsyncClient, repo: str, executors: list[str], instruction: str,
    base_ref: str | None = None, title: str | None = None,
) -> dict[str, Any]:
    if Path(repo).exists():  # a local path: the services may run elsewhere than our cwd
        repo = str(Path(repo).resolve())
    repo_doc = await call(client, "POST", "/v1/repos", json={"url": repo})
    task = await call(client, "POST", "/v1/tasks",
                      json={"repo_id": repo_doc["id"], "title": title or instruction[:60]})
    body: dict[str, Any] = {"instruction": instruction, "executors": executors}
    if base_ref:
        body["base_ref"] = base_ref
    accepted = await call(client, "POST", f"/v1/tasks/{task['id']}/runs", json=body)
    return {"task": task, **accepted}


def _prefix(index: int, name: str, width: int, out: TextIO) -> str:
    label = f"{name:<{width}} |"
    return f"{COLORS[index % len(COLORS)]}{label}{RESET}" if out.isatty() else label


async def stream_logs(
    client: httpx.AsyncClient, run_id: str, prefix: str, out: TextIO
) -> None:
    try:
        async for event in follow(client, f"/v1/runs/{run_id}/logs/stream"):
            if event.event != "log":
                continue
            chunk = msgspec.json.decode(event.data)
            for line in chunk.get("lines", []):
                out.write(f"{prefix} {line['text']}\n")
            if chunk.get("dropped"):
                out.write(f"{prefix} [{chunk['dropped']} lines dropped by the log cap]\n")
            out.flush()
    except httpx.HTTPError as exc:  # logs are a view: the run goes on without them
        out.write(f"{prefix} [log stream unavailable: {exc}]\n")


async def wait_terminal(
    client: httpx.AsyncClient, run_ids: list[str], poll: float = 0.3, out: TextIO | None = None
) -> dict[str, dict[str, Any]]:
    states: dict[str, str] = {}
    runs: dict[str, dict[str, Any]] = {}
    while True:
        for run_id in run_ids:
            if states.get(run_id) in TERMINAL:
                continue
            run = await call(client, "GET", f"/v1/runs/{run_id}", params={"diff": "0"})
            runs[run_id] = run
            if out is not None and states.get(run_id) != run["state"]:
                out.write(f"-- {run['executor']}: {run['state']}\n")
                out.flush()
            states[run_id] = run["state"]
        if all(states.get(r) in TERMINAL for r in run_ids):
            return runs
        await asyncio.sleep(poll)


async def run_and_follow(
    client: httpx.AsyncClient, repo: str, executors: list[str], instruction: str,
    base_ref: str | None = None, show_logs: bool = True, out: TextIO = sys.stdout,
) -> bool:
    accepted = await submit(client, repo, executors, instruction, base_ref)
    runs = accepted["runs"]
    out.write(f"task {accepted['task']['id']}: {len(runs)} runs accepted\n")
    width = max(len(r["executor"]) for r in runs)
    async with asyncio.TaskGroup() as group:
        loggers = []
        if show_logs:
            for index, run in enumerate(runs):
                prefix = _prefix(index, run["executor"], width, out)
                loggers.append(group.create_task(stream_logs(client, run["id"], prefix, out)))
        final = await wait_terminal(client, [r["id"] for r in runs], out=out)
        for task in loggers:  # the end event normally stops them; do not hang if it does not
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
    out.write("\n")
    for run in runs:
        print_outcome(final[run["id"]], out)
    return all(final[r["id"]]["state"] == "succeeded" for r in runs)


def print_outcome(run: dict[str, Any], out: TextIO) -> None:
    out.write(f"{run['executor']}: {run['state']}  run {run['id']}")
    if run.get("branch"):
        out.write(f"  branch {run['branch']}")
    if run.get("commit_sha"):
        out.write(f"  commit {run['commit_sha'][:10]}")
    out.write("\n")
    if run.get("reason"):
        out.write(f"    reason: {run['reason']}\n")
    if run.get("summary"):
        out.write(f"    summary: {run['summary'].strip().splitlines()[0]}\n")
    files = run.get("files_changed") or []
    for change in files:
        added, removed = change["added"], change["removed"]
        out.write(f"    {change['status']} {change['path']}  +{added} -{removed}\n")
    if files:
        added = sum(c["added"] for c in files)
        removed = sum(c["removed"] for c in files)
        out.write(f"    {len(files)} files changed, {added} insertions(+),"
                  f" {removed} deletions(-)\n")
