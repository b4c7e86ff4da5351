"""ops/: the alert rules and the dashboard parse, name only metrics zloth exports, and
cover the seed's targets; promtool checks the rules too when it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from services.core import metrics
from services.core.llm.wire import REQUEST_STATUSES
from services.log_relay import metrics as _relay_metrics  # noqa: F401  registers its metrics

OPS = Path(__file__).resolve().parents[2] / "ops"
METRIC = re.compile(r"\bzloth_[a-z_]+")


def exported_names() -> set[str]:
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
            names.add(family.name + suffix)
    return names


def test_alert_rules_are_well_formed_and_use_exported_metrics() -> None:
    doc = yaml.safe_load((OPS / "alerts.yml").read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert len(rules) >= 8
    known = exported_names()
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in {"warning", "critical"}
        used = set(METRIC.findall(rule["expr"]))
        assert used, rule["alert"]
        unknown = used - known
        assert not unknown, (rule["alert"], unknown)
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_the_seed_targets_are_alerts() -> None:
    text = (OPS / "alerts.yml").read_text()
    assert "zloth_queue_latency_seconds_bucket[5m]))) > 5" in text  # queue dwell p95 < 5 s
    assert "zloth_job_start_latency_seconds_bucket[5m]))) > 10" in text  # job start p95 < 10 s
    assert 'zloth_llm_requests_total{status="rate_limited"}' in text and "> 0.01" in text
    assert 'zloth_llm_requests_total{status="server_error"}' in text and "> 0.001" in text
    assert "zloth_dead_letters_total" in text and "> 0.9" in text


def test_promtool_accepts_the_rules_when_installed() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:  # the parser checks above still hold; CI installs promtool
        return
    done = subprocess.run([promtool, "check", "rules", str(OPS / "alerts.yml")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_panels_query_exported_metrics() -> None:
    dashboard = json.loads((OPS / "grafana" / "zloth-dashboard.json").read_text())
    known = exported_names()
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 12
    for expr in exprs:
        assert set(METRIC.findall(expr)) <= known, expr


def test_scrape_config_covers_every_service() -> None:
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"zloth-gateway", "zloth-scheduler", "zloth-workspace-manager",
            "zloth-executor-runner", "zloth-log-relay"} <= jobs


def test_llm_status_matchers_name_statuses_the_client_counts() -> None:
    """A matcher on a value the client never writes (say "429") is an alert that can
    never fire: every status the rules and panels name must be one it counts."""
    dashboard = (OPS / "grafana" / "zloth-dashboard.json").read_text().replace('\\"', '"')
    text = (OPS / "alerts.yml").read_text() + dashboard
    named = re.findall(r'zloth_llm_requests_total\{status=~?"([^"]+)"', text)
    assert len(named) >= 3
    assert set(named) <= set(REQUEST_STATUSES), named
