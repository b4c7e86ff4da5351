"""Gateway pieces that need no broker: repository url rules, settings, request fingerprints,
how a publish failure is classified."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.core.config import load_settings
from services.core.errors import BackpressureError, BusError, ConfigError
from services.gateway.idempotency import fingerprint
from services.gateway.outbox import surely_not_sent
from services.gateway.repos import RepoUrlError, check_repo_url
from services.gateway.settings import GatewaySettings


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("https://github.com/o/r.git", "https://github.com/o/r.git"),
        ("http://git.local/o/r/", "http://git.local/o/r"),
        ("ssh://git@github.com/o/r.git", "ssh://git@github.com/o/r.git"),
        ("git://example.com/r", "git://example.com/r"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
    ],
)
def test_remote_git_urls_are_accepted(url: str, normalised: str) -> None:
    assert check_repo_url(url) == (normalised, None)


@pytest.mark.parametrize(
    "url",
    [
        "relative/path", "ext::sh -c touch% /tmp/x", "-oProxyCommand=x", "https://", "ftp://h/r",
        "https://u:p@github.com/o/r.git", "/definitely/not/here", "https://h/a b",
        "https://h/\x01r", "ssh://h/",
    ],
)
def test_anything_else_is_refused(url: str) -> None:
    with pytest.raises(RepoUrlError):
        check_repo_url(url)


def test_local_repositories_work_tree_bare_and_file_url(tmp_path: Path) -> None:
    work = tmp_path / "work"
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "init", "-q", "-b", "trunk", str(work)], check=True)
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    assert check_repo_url(str(work) + "/") == (str(work), "trunk")
    assert check_repo_url(str(bare)) == (str(bare), "main")
    assert check_repo_url(f"file://{work}") == (f"file://{work}", "trunk")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RepoUrlError, match="not a git repository"):
        check_repo_url(str(plain))


def test_settings_come_from_the_environment() -> None:
    settings = load_settings(
        GatewaySettings, {"ZLOTH_GATEWAY_PORT": "9001", "ZLOTH_DEFAULT_TIMEOUT_SECONDS": "60"},
        service="gateway",
    )
    assert (settings.port, settings.default_timeout_seconds) == (9001, 60.0)
    assert settings.reconcile_seconds == 5.0
    with pytest.raises(ConfigError, match="ZLOTH_PORT"):
        load_settings(GatewaySettings, {"ZLOTH_PORT": "eighty"})


def test_a_fingerprint_ignores_json_key_order_but_not_values_or_paths() -> None:
    base = fingerprint("POST", "/v1/tasks", b'{"a": 1, "b": [1, 2]}')
    assert fingerprint("POST", "/v1/tasks", b'{"b":[1,2],"a":1}') == base
    assert fingerprint("POST", "/v1/tasks", b'{"a": 2, "b": [1, 2]}') != base
    assert fingerprint("POST", "/v1/repos", b'{"a": 1, "b": [1, 2]}') != base
    assert fingerprint("POST", "/v1/tasks", b"{not json") != base


def test_only_a_refused_publish_counts_as_surely_not_sent() -> None:
    assert surely_not_sent(BackpressureError("full"))
    assert surely_not_sent(BusError("no stream"))
    timed_out = BusError("timeout")
    timed_out.__cause__ = TimeoutError()
    assert not surely_not_sent(timed_out)
    assert not surely_not_sent(TimeoutError())
