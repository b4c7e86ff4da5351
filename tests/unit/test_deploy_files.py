"""The production files parse and agree with the code: every service in the compose file
runs a real `zloth serve` target, the NATS cluster has three routed nodes, and the proxy
sends the log routes to the log-relay."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.cli.main import SERVICES

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_every_service_on_a_three_node_cluster() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    served = {s["command"][1] for s in services.values()
              if isinstance(s.get("command"), list) and s["command"][:1] == ["serve"]}
    assert served == set(SERVICES)
    nats = [name for name in services if name.startswith("nats-")]
    assert len(nats) == 3
    for name in served:
        env = services[name]["environment"]
        assert env["ZLOTH_STREAM_REPLICAS"] == "3"
        assert env["ZLOTH_NATS_URL"].count("nats://") == 3


def test_nats_nodes_route_to_each_other() -> None:
    for n in (1, 2, 3):
        text = (ROOT / "ops" / "nats" / f"nats-{n}.conf").read_text()
        assert f"server_name: nats-{n}" in text and "jetstream" in text
        assert all(f"nats-route://nats-{m}:6222" in text for m in (1, 2, 3))


def test_proxy_routes_log_streams_to_the_relay() -> None:
    caddy = (ROOT / "ops" / "proxy" / "Caddyfile").read_text()
    assert "log-relay:8001" in caddy and "gateway:8000" in caddy
    assert "logs(/stream)?" in caddy and "events/stream" in caddy


def test_services_sharing_the_workspaces_volume_are_one_host() -> None:
    """Containers have their own host names: the workspace-manager and the runner that
    share a disk must say they are one host, or no runner takes their runs' commands."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    sharing = [s for s in services.values() if "workspaces:/data" in s.get("volumes", [])]
    assert len(sharing) == 2
    hosts = {s["environment"].get("ZLOTH_HOST_ID") for s in sharing}
    assert len(hosts) == 1 and None not in hosts
