"""Logs are JSON lines with the bound context, and never carry a secret."""

from __future__ import annotations

import json

import pytest
import structlog

from services.core.telemetry import configure_logging, get_logger


def test_json_lines_with_context_and_no_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        with structlog.contextvars.bound_contextvars(correlation_id="req-1", run_id="run_9"):
            get_logger(service="gateway").info(
                "provider_called", api_key="sk-live-0123456789abcdef",
                note="used Bearer abcdef123456 and ghp_0123456789abcdefghij", attempt=2,
                google="AIzaSyA0123456789abcdefghijklmnopqrstu",
            )
    finally:
        structlog.reset_defaults()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["event"] == "provider_called"
    assert entry["service"] == "gateway"
    assert entry["correlation_id"] == "req-1" and entry["run_id"] == "run_9"
    assert entry["attempt"] == 2
    assert "sk-live" not in line and "abcdef123456" not in line and "ghp_" not in line
    assert "AIzaSy" not in line
    assert entry["api_key"] == "[redacted]"
