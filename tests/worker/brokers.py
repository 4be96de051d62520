"""Isolated backends for worker tests, one factory per broker.

Each factory is a context manager that yields a :class:`Backend`: a broker URL
naming a fresh namespace (a file, a key prefix, a schema...) on the shared
service, and the result sinks an app on it needs. It cleans the namespace up
afterwards. A backend whose server is not reachable is skipped (failed with
CELERIAC_REQUIRE_SERVICES=1): see :mod:`tests.brokers._shared`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.brokers._shared import (
    POSTGRES_URL,
    amqp_namespace,
    nats_namespace,
    postgres_schema,
    redis_namespace,
)

from celeriac.testing.conformance import with_options


@dataclass(frozen=True)
class Backend:
    """A broker URL of a test's own, and the sinks an app on it is given."""

    url: str
    sinks: dict[str, str] = field(default_factory=dict)


Factory = Callable[[Path], AbstractContextManager[Backend]]
"""Makes a test's backend (given the test's ``tmp_path``) and cleans it up."""


@contextmanager
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    yield Backend(f"sqlite:///{tmp_path / 'celeriac.db'}")


@contextmanager
def postgres_backend(tmp_path: Path) -> Iterator[Backend]:
    with postgres_schema() as schema:
        yield Backend(with_options(POSTGRES_URL, schema=schema))


def results_beside(namespace: Callable[[], AbstractContextManager[str]]) -> Factory:
    """The factory of a broker that keeps results itself, in the namespace it is given."""

    @contextmanager
    def factory(tmp_path: Path) -> Iterator[Backend]:
        with namespace() as url:
            yield Backend(url)

    return factory


@contextmanager
def amqp_backend(tmp_path: Path) -> Iterator[Backend]:
    """RabbitMQ keeps no results: they go to a Redis key prefix of the test's own."""
    with amqp_namespace() as url, redis_namespace() as results:
        yield Backend(url, sinks={"default": results})


FACTORIES: dict[str, Factory] = {
    "sqlite": sqlite_backend,
    "redis": results_beside(redis_namespace),
    "postgres": postgres_backend,
    "nats": results_beside(nats_namespace),
    "amqp": amqp_backend,
}


@contextmanager
def short_lease_broker(kind: str, tmp_path: Path, visibility: float) -> Iterator[str]:
    """A SQLite or Redis broker URL of a test's own whose leases last ``visibility``
    seconds, so a killed worker's messages come back quickly."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'short-lease.db'}?visibility_timeout={visibility}"
        return
    with redis_namespace() as url:
        yield with_options(url, visibility_timeout=visibility)
