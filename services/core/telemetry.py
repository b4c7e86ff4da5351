"""structlog set-up: JSON lines (console when a terminal is attached), context variables
carrying service, run id and correlation id through every log line, and secret scrubbing."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

_SECRET_KEYS = re.compile(r"(token|secret|password|api_key|apikey|authorization|credential)", re.I)
_SECRET_VALUES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|AIza[0-9A-Za-z_\-]{20,}|Bearer\s+\S+)"
)


def _json_dumps(obj: Any, **_: Any) -> str:
    # structlog passes `default=`; msgspec.json.encode takes no such keyword.
    return msgspec.json.encode(obj, enc_hook=str).decode()


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and key not in {"event"}:
            event[key] = "[redacted]"
        elif isinstance(value, str) and _SECRET_VALUES.search(value):
            event[key] = _SECRET_VALUES.sub("[redacted]", value)
    return event


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer(_json_dumps)
    if console:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger(**initial)
