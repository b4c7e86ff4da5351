"""Apply a service's numbered SQL migrations (`migrations/<dialect>/NNNN_name.sql`) once."""

from __future__ import annotations

from importlib import resources

from services.core.store.base import Store

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    service TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (service, version)
)
"""


async def migrate(store: Store, service: str, package: str) -> list[str]:
    """Apply pending migrations of `package` (e.g. "services.gateway"); return their names."""
    await store.execute(_LEDGER)
    done = {
        row["version"]
        for row in await store.fetchall(
            "SELECT version FROM schema_migrations WHERE service = ?", (service,)
        )
    }
    folder = resources.files(package).joinpath("migrations", store.dialect)
    applied: list[str] = []
    if not folder.is_dir():
        return applied
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        version = int(entry.name.split("_", 1)[0])
        if version in done:
            continue
        await store.executescript(entry.read_text())
        await store.execute(
            "INSERT INTO schema_migrations (service, version, name) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (service, version, entry.name),
        )
        applied.append(entry.name)
    return applied
