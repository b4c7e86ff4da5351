"""Settings from `ZLOTH_*` environment variables, validated once at start-up.

Each service declares a Settings Struct (usually extending `CommonSettings`); field `foo_bar`
reads `ZLOTH_<SERVICE>_FOO_BAR` first (e.g. `ZLOTH_GATEWAY_PORT`), then `ZLOTH_FOO_BAR`, so
services sharing one environment can still differ. Lists are comma-separated. A bad value
fails with a `ConfigError` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from schemas.hosts import host_token
from services.core.errors import ConfigError

PREFIX = "ZLOTH_"


class CommonSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    nats_url: str = ""  # empty: `zloth up` starts an embedded nats-server
    data_dir: Path = Path(".zloth")
    database_url: str = ""  # empty: sqlite files under data_dir
    log_format: str = "auto"  # json | console | auto (console when a terminal is attached)
    log_level: str = "info"
    instance_id: str = ""  # empty: hostname-pid
    stream_replicas: int = 1  # 3 for R3 streams on a three-node NATS cluster
    tracing: bool = False  # OpenTelemetry over OTLP (OTEL_EXPORTER_OTLP_* say where)
    # This machine's name in subjects (see schemas/hosts.py); the same for every service
    # on one host, unique per host. Empty: the host name.
    host_id: str = ""
    # on SIGINT/SIGTERM, in-flight work gets this long to finish; then it is stopped
    # (agents killed) and left unacked, so the broker hands it to another replica
    drain_seconds: float = 30.0

    def __post_init__(self) -> None:
        # Paths travel in messages between processes: never relative to one's cwd.
        if not self.data_dir.is_absolute():
            msgspec.structs.force_setattr(self, "data_dir", self.data_dir.absolute())

    @property
    def subject_host(self) -> str:
        """This host as it appears in subjects and consumer names (not an HTTP bind
        address: some services have a `host` setting for that)."""
        return host_token(self.host_id)

    def sqlite_path(self, service: str) -> Path:
        return self.data_dir / "db" / f"{service}.sqlite3"


S = TypeVar("S", bound=msgspec.Struct)


def env_name(field: str, service: str | None = None) -> str:
    scope = f"{service.upper().replace('-', '_')}_" if service else ""
    return f"{PREFIX}{scope}{field.upper()}"


def load_settings(
    kind: type[S],
    environ: Mapping[str, str] | None = None,
    *,
    service: str | None = None,
    **overrides: Any,
) -> S:
    """Build `kind` from the environment (then `overrides`), or raise ConfigError."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    names: dict[str, str] = {}
    for field in msgspec.structs.fields(kind):
        for name in (env_name(field.name, service), env_name(field.name)):
            if name in env:
                raw[field.name] = _coerce(env[name], field.type)
                names[field.name] = name
                break
    raw.update(overrides)
    try:
        return msgspec.convert(raw, kind, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, names)) from None


def _coerce(value: str, annotation: Any) -> Any:
    text = str(annotation)
    if text.startswith("list[") or text.startswith("tuple["):
        return [part.strip() for part in value.split(",") if part.strip()]
    if text.startswith("dict["):
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError:
            return value
    return value


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError


def _explain(exc: msgspec.ValidationError, names: Mapping[str, str]) -> str:
    # msgspec says "... - at `$.port`"; turn the path into the variable that was read.
    message = str(exc)
    if "at `$." in message:
        head, _, path = message.partition(" - at `$.")
        field = path.rstrip("`").split(".")[0].split("[")[0]
        return f"{names.get(field, env_name(field))}: {head}"
    return message
