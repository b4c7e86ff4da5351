"""Architecture rules, checked on the AST: schemas import no service, services.core imports
no service, a service never imports another, and only services/core/bus.py imports nats."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "scheduler", "workspace_manager", "executor_runner", "log_relay",
            "ci_watcher")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_there_is_code_to_check() -> None:
    assert len(python_files("services")) > 20
    assert len(python_files("schemas")) > 4


def test_schemas_import_no_service() -> None:
    for path in python_files("schemas"):
        assert not [m for m in imports_of(path) if m.startswith("services")], path


def test_core_imports_no_service() -> None:
    for path in python_files("services/core"):
        bad = [m for m in imports_of(path)
               if m.startswith("services.") and not m.startswith("services.core")]
        assert not bad, (path, bad)


def test_services_do_not_import_each_other() -> None:
    for service in SERVICES:
        for path in python_files(f"services/{service}"):
            others = [m for m in imports_of(path) if m.startswith("services.")
                      and not m.startswith(("services.core", f"services.{service}"))]
            assert not others, (path, others)


def test_only_the_bus_imports_nats() -> None:
    for folder in ("schemas", "services"):
        for path in python_files(folder):
            if path == ROOT / "services/core/bus.py":
                continue
            nats = [m for m in imports_of(path) if m == "nats" or m.startswith("nats.")]
            assert not nats, path
