"""Stores: the interface, the SQLite implementation, migrations, and the fencing leases."""

from __future__ import annotations

from services.core.config import CommonSettings
from services.core.errors import ConfigError
from services.core.store.base import Queries, Row, Store
from services.core.store.migrate import migrate
from services.core.store.sqlite import SqliteStore

__all__ = ["Queries", "Row", "SqliteStore", "Store", "migrate", "open_lease_store", "open_store"]


async def open_store(settings: CommonSettings, service: str, package: str) -> Store:
    """Open `service`'s own database and apply the core and the service's migrations."""
    if settings.database_url and not settings.database_url.startswith("sqlite"):
        raise ConfigError(
            "ZLOTH_DATABASE_URL: only sqlite is implemented in this version"
            f" (got {settings.database_url.split(':', 1)[0]}://)"
        )
    store = await SqliteStore.open(settings.sqlite_path(service))
    await migrate(store, "core", "services.core.store")
    await migrate(store, service, package)
    return store


async def open_lease_store(settings: CommonSettings, service: str) -> Store:
    """The same database, opened for the bus's fencing leases: a lease only fences
    processes that are alive, so it need not survive the machine (no fsync per claim)."""
    return await SqliteStore.open(settings.sqlite_path(service), synchronous="NORMAL")
