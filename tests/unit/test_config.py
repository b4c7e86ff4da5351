"""Settings come from ZLOTH_* variables, scoped per service, and fail naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.config import CommonSettings, load_settings
from services.core.errors import ConfigError


class DemoSettings(CommonSettings, frozen=True, kw_only=True):
    port: int = 8000
    executors: list[str] = []
    ratio: float = 0.5


def test_values_come_from_the_environment() -> None:
    settings = load_settings(DemoSettings, {
        "ZLOTH_PORT": "9000", "ZLOTH_EXECUTORS": "a, b", "ZLOTH_DATA_DIR": "/tmp/z",
    })
    assert settings.port == 9000
    assert settings.executors == ["a", "b"]
    assert settings.data_dir == Path("/tmp/z")
    assert settings.ratio == 0.5


def test_a_service_scoped_variable_wins() -> None:
    env = {"ZLOTH_PORT": "9000", "ZLOTH_GATEWAY_PORT": "9100"}
    assert load_settings(DemoSettings, env, service="gateway").port == 9100
    assert load_settings(DemoSettings, env, service="log-relay").port == 9000
    assert load_settings(DemoSettings, {"ZLOTH_LOG_RELAY_PORT": "1"}, service="log-relay").port == 1


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="ZLOTH_GATEWAY_PORT"):
        load_settings(DemoSettings, {"ZLOTH_GATEWAY_PORT": "eighty"}, service="gateway")
    with pytest.raises(ConfigError, match="ZLOTH_RATIO"):
        load_settings(DemoSettings, {"ZLOTH_RATIO": "half"})
