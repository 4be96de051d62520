"""The coordinator contract (celeriac.testing.coordination) on every built-in backend.

Memory and SQLite need nothing; Redis and PostgreSQL run on the shared servers
(127.0.0.1:6379, 127.0.0.1:5432), each test under a key prefix or schema of its
own, deleted afterwards, and are skipped when the server is down (failed with
CELERIAC_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import pytest
from tests.brokers._shared import returning

from celeriac.testing.coordination import CoordinatorConformance


class TestMemoryCoordinator(CoordinatorConformance):
    @pytest.fixture
    def coordinator_url(self) -> str:
        return "memory://"


class TestSqliteCoordinator(CoordinatorConformance):
    coordinator_url = returning("sqlite_file_url")


class TestRedisCoordinator(CoordinatorConformance):
    coordinator_url = returning("redis_url")


class TestPostgresCoordinator(CoordinatorConformance):
    coordinator_url = returning("postgres_url")
