"""The scheme registry: URL to backend, options, entry points, the per-App hub."""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

import celeriac.brokers._registry as registry
from celeriac.abc import Broker, DataSink
from celeriac.brokers import Hub, broker_schemes, open_broker
from celeriac.brokers._registry import Builtin, SchemeRegistry
from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.sqlite import SqliteBroker
from celeriac.errors import ConfigurationError
from celeriac.sinks import open_sink, sink_schemes
from celeriac.sinks.memory import MemorySink
from celeriac.sinks.sqlite import SqliteSink


def test_builtin_schemes_open_their_backends(tmp_path: Path) -> None:
    hub = Hub()
    broker = open_broker("memory://", hub)
    sink = open_sink(f"sqlite:///{tmp_path}/x.db", hub)
    assert isinstance(broker, MemoryBroker)
    assert isinstance(broker, Broker)
    assert isinstance(sink, SqliteSink)
    assert isinstance(sink, DataSink)
    assert isinstance(open_broker(f"SQLITE:///{tmp_path}/x.db", hub), SqliteBroker)
    assert isinstance(open_sink("memory://results", hub), MemorySink)
    for scheme in ("memory", "sqlite", "redis", "amqp", "nats", "postgresql"):
        assert scheme in broker_schemes()
    assert {"memory", "sqlite", "redis", "postgresql"} <= set(sink_schemes())


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(
        ConfigurationError, match=r"no broker backend for kafka://.*memory://.*sqlite://"
    ):
        open_broker("kafka://localhost", Hub())
    with pytest.raises(ConfigurationError, match=r"no sink backend for s3://"):
        open_sink("s3://bucket", Hub())


@pytest.mark.parametrize("url", ["", "memory", "/tmp/x.db", "://x"])
def test_a_string_that_is_not_a_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="not a backend URL"):
        open_broker(url, Hub())


def test_sqlite_paths_follow_the_sqlalchemy_convention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_broker("sqlite:///sub/rel.db", Hub())
    absolute = open_sink(f"sqlite:///{tmp_path}/abs.db", Hub())
    assert isinstance(relative, SqliteBroker)
    assert isinstance(absolute, SqliteSink)
    assert relative.path == str(tmp_path / "sub" / "rel.db")
    assert absolute.path == str(tmp_path / "abs.db")


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite://host/x.db"]
)
def test_sqlite_url_must_name_a_file(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_broker(url, Hub())


def test_query_parameters_configure_the_backend(tmp_path: Path) -> None:
    broker = open_broker(
        f"sqlite:///{tmp_path}/x.db?visibility_timeout=2.5&synchronous=FULL", Hub()
    )
    assert isinstance(broker, SqliteBroker)
    assert broker.visibility_timeout == 2.5
    memory = open_broker("memory://jobs?visibility_timeout=3", Hub())
    assert isinstance(memory, MemoryBroker)
    assert (memory.name, memory.visibility_timeout) == ("jobs", 3.0)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "visibilty_timeout=2",
            r"unknown option\(s\) visibilty_timeout .*known: .*visibility_timeout",
        ),
        ("visibility_timeout=soon", "must be a number"),
        ("visibility_timeout=-1", "must be >= 0"),
        ("visibility_timeout=nan", "must be >= 0"),
        ("synchronous=sometimes", "must be one of normal, full, off"),
        ("busy_timeout=1&busy_timeout=2", "given twice"),
    ],
)
def test_bad_options_are_configuration_errors(tmp_path: Path, query: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_broker(f"sqlite:///{tmp_path}/x.db?{query}", Hub())


def test_a_sink_accepts_its_brokers_url(tmp_path: Path) -> None:
    for url in (
        f"sqlite:///{tmp_path}/x.db?visibility_timeout=2",
        "memory://?visibility_timeout=2",
    ):
        open_sink(url, Hub())
        open_broker(url, Hub())
    with pytest.raises(ConfigurationError, match="unknown option"):
        open_sink("memory://?ttl=3", Hub())


def _fake_entry_points(*points: EntryPoint) -> Any:
    def entry_points(*, group: str, name: str | None = None) -> list[EntryPoint]:
        return [p for p in points if p.group == group and name in (None, p.name)]

    return entry_points


def test_third_party_backends_register_through_entry_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        registry,
        "entry_points",
        _fake_entry_points(
            EntryPoint("thirdparty", "celeriac.brokers.memory:MemoryBroker", "celeriac.brokers"),
            EntryPoint("memory", "celeriac.brokers.sqlite:SqliteBroker", "celeriac.brokers"),
            EntryPoint("broken", "celeriac.brokers.memory:NoSuchClass", "celeriac.brokers"),
        ),
    )
    assert {"thirdparty", "broken"} <= set(broker_schemes())
    assert isinstance(open_broker("thirdparty://x", Hub()), MemoryBroker)
    assert isinstance(open_broker("memory://", Hub()), MemoryBroker)  # built-ins win
    with pytest.raises(ConfigurationError, match=r"broken:// .* failed to load"):
        open_broker("broken://", Hub())
    with pytest.raises(ConfigurationError, match="thirdparty://"):
        open_sink("thirdparty://x", Hub())  # another group


def test_a_missing_backend_module_or_client_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    reg: SchemeRegistry[Broker] = SchemeRegistry(
        "broker",
        "celeriac.brokers",
        {
            "later": Builtin("celeriac.brokers._not_written_yet", "LaterBroker"),
            "client": Builtin("celeriac.brokers.memory", "MemoryBroker", "someclient"),
        },
    )
    with pytest.raises(ConfigurationError, match="later:// is not available"):
        reg.open("later://", Hub())

    def import_module(name: str) -> Any:
        raise ModuleNotFoundError("No module named 'someclient'", name="someclient")

    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(
        ConfigurationError, match=r"needs 'someclient' \(pip install 'celeriac\[someclient\]'\)"
    ):
        reg.open("client://", Hub())


def test_a_hub_shares_stores_by_kind_and_name_and_hubs_do_not_share() -> None:
    one, two = Hub(), Hub()
    made: list[str] = []

    def factory() -> list[str]:
        made.append("x")
        return []

    assert one.get("k", "a", factory) is one.get("k", "a", factory)
    assert one.get("k", "a", factory) is not one.get("k", "b", factory)
    assert one.get("k", "a", factory) is not one.get("other", "a", factory)
    assert one.get("k", "a", factory) is not two.get("k", "a", factory)
    assert len(made) == 4
