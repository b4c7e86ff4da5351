"""The `zloth` command: `up` (everything in one process), `serve <service>`, and the client
commands `run`, `runs show`, `logs`, `status`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import httpx
import msgspec

from services.cli import client as api
from services.cli.sse import follow
from services.cli.status import render_status

SERVICES: dict[str, str] = {
    "gateway": "services.gateway",
    "scheduler": "services.scheduler",
    "workspace-manager": "services.workspace_manager",
    "executor-runner": "services.executor_runner",
    "log-relay": "services.log_relay",
}
DEFAULT_API = "http://127.0.0.1:8000"


def _version() -> str:
    try:
        return version("zloth")
    except PackageNotFoundError:
        return "dev"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zloth", description=__doc__)
    parser.add_argument("--version", action="version", version=f"zloth {_version()}")
    parser.add_argument("--api", default=os.environ.get("ZLOTH_API_URL", DEFAULT_API),
                        help="gateway URL for client commands (env ZLOTH_API_URL)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run every service in one process (embedded NATS + SQLite)")
    up.add_argument("--demo", action="store_true",
                    help="also create a sample repository and run three demo agents on it")
    up.add_argument("--demo-then-exit", action="store_true", help=argparse.SUPPRESS)

    serve = sub.add_parser("serve", help="run one service in this process")
    serve.add_argument("service", choices=sorted(SERVICES))
    serve.add_argument("rest", nargs=argparse.REMAINDER)

    run = sub.add_parser("run", help="submit an instruction to several executors and follow it")
    run.add_argument("--repo", required=True, help="git URL or local path")
    run.add_argument("--executor", "-e", action="append", required=True, dest="executors")
    run.add_argument("--base", default=None, help="base branch or ref (default: repo default)")
    run.add_argument("--no-logs", action="store_true", help="show states only")
    run.add_argument("instruction")

    runs = sub.add_parser("runs", help="inspect runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    show = runs_sub.add_parser("show")
    show.add_argument("run_id")
    show.add_argument("--diff", action="store_true")

    logs = sub.add_parser("logs", help="print a run's log")
    logs.add_argument("run_id")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until the run ends")

    status = sub.add_parser("status", help="one-screen health view")
    status.add_argument("--json", action="store_true", help="the raw /v1/status document")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "up":
        from services.cli.up import up

        return up(demo=args.demo or args.demo_then_exit, exit_after_demo=args.demo_then_exit)
    if args.command == "serve":
        module = importlib.import_module(f"{SERVICES[args.service]}.__main__")
        return int(module.main(args.rest))
    try:
        return asyncio.run(_client_command(args))
    except api.ApiError as exc:
        print(f"zloth: {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"zloth: cannot reach the gateway at {args.api}: {exc}", file=sys.stderr)
        return 1


async def _client_command(args: argparse.Namespace) -> int:
    async with httpx.AsyncClient(base_url=args.api, timeout=30) as client:
        if args.command == "run":
            ok = await api.run_and_follow(client, args.repo, args.executors, args.instruction,
                                          args.base, show_logs=not args.no_logs)
            return 0 if ok else 1
        if args.command == "runs":
            run = await api.call(client, "GET", f"/v1/runs/{args.run_id}")
            api.print_outcome(run, sys.stdout)
            if args.diff and run.get("diff"):
                sys.stdout.write(run["diff"])
            return 0
        if args.command == "logs":
            return await _logs(client, args.run_id, args.follow)
        if args.command == "status":
            status = await api.call(client, "GET", "/v1/status")
            if args.json:
                sys.stdout.write(msgspec.json.format(msgspec.json.encode(status)).decode() + "\n")
            else:
                render_status(status, sys.stdout)
            return 0 if status.get("ok") else 1
    return 2


async def _logs(client: httpx.AsyncClient, run_id: str, keep_following: bool) -> int:
    if keep_following:
        async for event in follow(client, f"/v1/runs/{run_id}/logs/stream"):
            if event.event == "log":
                for line in msgspec.json.decode(event.data).get("lines", []):
                    print(f"{line['ts']} {line['stream']:<6} {line['text']}")
            elif event.event == "end":
                print(f"-- run ended: {msgspec.json.decode(event.data).get('state')}")
        return 0
    after = 0
    while True:
        page = await api.call(client, "GET", f"/v1/runs/{run_id}/logs", params={"after": after})
        for chunk in page["chunks"]:
            for line in chunk.get("lines", []):
                print(f"{line['ts']} {line['stream']:<6} {line['text']}")
        if not page["chunks"] or page.get("next_after") in (None, after):
            return 0
        after = page["next_after"]


if __name__ == "__main__":
    sys.exit(main())
