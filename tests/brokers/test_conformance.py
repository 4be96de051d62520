"""The broker and sink contracts (celeriac.testing.conformance) on the embedded backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeriac.testing.conformance import BrokerConformance, SinkConformance


class TestMemoryBroker(BrokerConformance):
    shared_across_processes = False

    @pytest.fixture
    def broker_url(self) -> str:
        return "memory://"


class TestSqliteBroker(BrokerConformance):
    @pytest.fixture
    def broker_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/celeriac.db"


class TestMemorySink(SinkConformance):
    @pytest.fixture
    def sink_url(self) -> str:
        return "memory://"


class TestSqliteSink(SinkConformance):
    @pytest.fixture
    def sink_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/celeriac.db"
