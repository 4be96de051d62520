"""App settings and where they come from.

Precedence, lowest first: built-in defaults, the ``config=`` source (a Python
module name, a ``.toml`` file, or a ``.yaml`` file), environment variables
``CELERIAC_<FIELD>`` (values parsed as JSON where they parse, else taken as
strings), then keyword arguments given to :class:`~celeriac.App`. Unknown names
in a ``.toml`` or ``.yaml`` source are an error, so a typo does not silently do
nothing; a Python module is read for the setting names it defines (other module
attributes, such as imports, are ignored).
"""

from __future__ import annotations

import importlib
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from celeriac.errors import ConfigurationError
from celeriac.failures.backoff import Retry

__all__ = ["Settings", "load_settings"]


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    """Every app-wide setting, with its default."""

    broker: str | list[str] = "sqlite:///celeriac.db"
    """One broker URL, or several (the first is the default)."""
    sinks: dict[str, str] = {}
    """Named data sinks; ``default`` holds results. Empty: results go beside the broker."""
    routes: dict[str, str] = {}
    """Task name -> queue (``"payments"``) or broker and queue (``"redis://...#payments"``)."""
    result_ttl: float | None = 86_400.0
    """Seconds a result is kept; ``None`` keeps it until deleted."""
    track_started: bool = True
    """Write a STARTED state when a task starts."""
    dedup_window: int = 100
    """How many recent message ids the idempotent receiver remembers."""
    serializer: Literal["json", "msgpack"] = "json"
    """How envelopes are encoded (both are always accepted)."""
    signing_keys: dict[str, str] = {}
    """Key id -> secret for HMAC-SHA256 signing; with any key, unsigned messages are rejected."""
    signing_key: str | None = None
    """Shorthand for one signing key (key id ``default``)."""
    revoke_ttl: float = 86_400.0
    """Seconds a revocation is remembered."""
    retry: Retry | None = Retry()
    """The retry policy of every task that does not name its own; ``None``: no retries."""
    dedupe_ttl: float = 86_400.0
    """Seconds a task's dedupe key (``dedupe=``) is remembered."""
    receiver_store: bool = False
    """Back the idempotent receiver by the default sink: a message whose run finished is
    not run again when it is redelivered, to any worker, after any restart (costs two
    sink operations per task)."""
    max_deliveries: int = 5
    """A message handed out more often than this without being settled (its runs keep
    killing or losing their worker: a poison message) goes to the dead letters."""
    publisher_backlog: str | None = None
    """Where messages wait until their broker accepts them: ``None`` (or ``memory://``)
    keeps them in memory; a file path or ``sqlite:///path.db`` keeps them in a SQLite
    file, so they survive a crash of the publishing process (see ``docs/publisher.md``)."""
    coordinator: str | None = None
    """Where global limits, rate limits and periodic ticks keep their state
    (``docs/coordination.md``); ``None``: the default sink's URL. An app on NATS or
    RabbitMQ names one (``redis://``, ``postgresql://``, ``sqlite:///``)."""


def _from_module(name: str) -> dict[str, Any]:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import config module {name!r}: {exc}") from exc
    fields = set(Settings.__struct_fields__)
    out: dict[str, Any] = {}
    for attr in dir(module):
        key = attr.lower()
        if key in fields and not attr.startswith("_"):
            out[key] = getattr(module, attr)
    return out


def _from_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigurationError(f"config file {path} does not exist")
    if path.suffix == ".toml":
        data: Any = tomllib.loads(path.read_text())
        data = data.get("celeriac", data)
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ConfigurationError("YAML config needs PyYAML: pip install pyyaml") from exc
        data = yaml.safe_load(path.read_text()) or {}
    else:
        raise ConfigurationError(f"config file {path} is not .toml or .yaml")
    if not isinstance(data, dict):
        raise ConfigurationError(f"config file {path} does not hold a table of settings")
    return data


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in Settings.__struct_fields__:
        raw = environ.get(f"CELERIAC_{field.upper()}")
        if raw is None:
            continue
        try:
            out[field] = json.loads(raw)
        except ValueError:
            out[field] = raw
    return out


def load_settings(
    source: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, ``source``, the environment and ``overrides`` into Settings."""
    merged: dict[str, Any] = {}
    if source is not None:
        text = str(source)
        if text.endswith((".toml", ".yaml", ".yml")):
            merged.update(_from_file(Path(text)))
        else:
            merged.update(_from_module(text))
    merged.update(_from_env(os.environ if environ is None else environ))
    merged.update(overrides or {})
    try:
        return msgspec.convert(merged, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"bad setting: {exc}") from exc
