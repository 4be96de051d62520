"""Fixtures for the coordinator tests: a store of each test's own on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports them (tests.brokers._shared imports the conformance
# module), whichever of this conftest and the brokers' one pytest loads first.
pytest.register_assert_rewrite("celeriac.testing.conformance", "celeriac.testing.coordination")

from tests.brokers._shared import POSTGRES_URL, postgres_schema, redis_namespace  # noqa: E402

from celeriac.testing.conformance import with_options  # noqa: E402


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A URL on the shared Redis with a key prefix of this test's own (deleted after)."""
    with redis_namespace() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL on the shared PostgreSQL with a schema of this test's own (dropped after)."""
    with postgres_schema() as name:
        yield with_options(POSTGRES_URL, schema=name)


@pytest.fixture
def sqlite_file_url(tmp_path: Path) -> str:
    """A URL on a fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'celeriac.db'}"


@pytest.fixture
def shared_url(request: pytest.FixtureRequest) -> str:
    """The URL of the shared backend the parameter names: sqlite, redis or postgresql."""
    fixture = {"sqlite": "sqlite_file_url", "redis": "redis_url", "postgresql": "postgres_url"}
    return str(request.getfixturevalue(fixture[request.param]))
