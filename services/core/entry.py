"""Entry points: run one service alone (`python -m services.<name>`, `zloth serve <name>`),
with `--check` to verify its settings, NATS, streams and store, then exit."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from schemas.streams import ALL_STREAMS
from services.core.bus import Bus
from services.core.config import CommonSettings, load_settings
from services.core.errors import ConfigError, ZlothError
from services.core.runtime import Unit, run_services
from services.core.store import open_store
from services.core.telemetry import configure_logging

S = TypeVar("S", bound=CommonSettings)


def run_loop(main: Callable[[], object]) -> None:
    """Run a coroutine function on uvloop where available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        asyncio.run(main())  # type: ignore[arg-type]
        return
    uvloop.run(main())  # type: ignore[arg-type]


def serve_main(
    name: str,
    settings_type: type[S],
    make_unit: Callable[[S], Unit],
    http_port: Callable[[S], int],
    argv: Sequence[str] | None = None,
    http_host: Callable[[S], str] = lambda s: "127.0.0.1",
) -> int:
    parser = argparse.ArgumentParser(prog=f"zloth serve {name}")
    parser.add_argument("--check", action="store_true", help="verify set-up and exit")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(settings_type, service=name)
        if not settings.nats_url:
            raise ConfigError("ZLOTH_NATS_URL: required when a service runs on its own")
    except ConfigError as exc:
        print(f"zloth {name}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    unit = make_unit(settings)
    if args.check:
        return _check(settings, unit)
    port = http_port(settings)

    async def main() -> None:
        await run_services(settings, [unit], settings.nats_url,
                           http_host=http_host(settings), http_port=port or None)

    try:
        run_loop(main)
    except ZlothError as exc:
        print(f"zloth {name}: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(settings: CommonSettings, unit: Unit) -> int:
    async def check() -> list[str]:
        problems: list[str] = []
        bus = await Bus.connect(settings.nats_url, name=f"{unit.name}-check")
        try:
            for spec in ALL_STREAMS:
                try:
                    await bus.stream_state(spec.name)
                except Exception as exc:  # noqa: BLE001  report every failing check
                    problems.append(f"stream {spec.name}: {exc}")
        finally:
            await bus.close()
        store = await open_store(settings, unit.name, unit.package)
        await store.close()
        return problems

    try:
        problems = asyncio.run(check())
    except ZlothError as exc:
        problems = [str(exc)]
    for problem in problems:
        print(f"{unit.name}: {problem}", file=sys.stderr)
    print(f"{unit.name}: {'ok' if not problems else 'FAILED'}")
    return 0 if not problems else 1
