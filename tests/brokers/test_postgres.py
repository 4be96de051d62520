"""The broker and sink contracts on PostgreSQL, plus what is particular to it.

Each test gets a schema of its own (``schema=`` in the URL), created by the
backend on connect and dropped afterwards, on the shared server at
127.0.0.1:5432 (``CELERIAC_POSTGRES_URL`` to use another). The contract runs
with a 30 s safety poll, so every wake-up it checks comes from NOTIFY or from
the computed next due time, never from polling. The restart cases run on a
cluster of this module's own (see ``server_postgres.py``).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import anyio
import anyio.to_thread
import pytest
from tests.brokers._shared import (
    POSTGRES_URL,
    connected,
    postgres_schema,
    postgres_sql,
    returning,
    unavailable,
)
from tests.brokers.server_postgres import PostgresServer, available

from celeriac.abc import Broker, DataSink, Delivery, Outgoing, StoredDocument
from celeriac.brokers import Hub, open_broker
from celeriac.errors import BrokerError, ConfigurationError
from celeriac.sinks import open_sink
from celeriac.testing.conformance import BrokerConformance, SinkConformance, with_options
from celeriac.testing.restart import ServerRestartConformance


@pytest.fixture
def schema() -> Iterator[str]:
    """A schema name of this test's own, dropped (with everything in it) afterwards."""
    with postgres_schema() as name:
        yield name


@pytest.fixture
def url(schema: str) -> str:
    """The shared server, this test's schema, and no help from the safety poll."""
    return with_options(POSTGRES_URL, schema=schema, poll_interval=30)


class TestPostgresBroker(BrokerConformance):
    broker_url = returning("url")


class TestPostgresSink(SinkConformance):
    sink_url = returning("url")


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    """A cluster of this module's own (one initdb for all the restart cases)."""
    reason = available()
    if reason is not None:
        unavailable(f"cannot start a PostgreSQL server of our own: {reason}")
    # A short lease: a claim whose reply was lost in the crash comes back quickly.
    server = PostgresServer("visibility_timeout=2")
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def running_server(own_server: PostgresServer) -> PostgresServer:
    """The module's own cluster, running."""
    if not own_server.running:  # a failed case left it stopped
        own_server.start()
    return own_server


class TestPostgresRestart(ServerRestartConformance):
    @pytest.fixture
    def server(self, running_server: PostgresServer) -> PostgresServer:
        return running_server


pytestmark = pytest.mark.anyio


async def test_a_waiting_fetch_and_wait_ride_out_a_server_restart(
    running_server: PostgresServer,
) -> None:
    server = running_server
    url = with_options(server.url, schema=f"s_{uuid.uuid4().hex[:8]}")
    hub = Hub()
    got: list[Delivery] = []
    found: dict[str, StoredDocument] = {}

    async def fetch(consumer: Broker) -> None:
        got.extend(await consumer.fetch(["q"], 10, 20.0))

    async def wait(reader: DataSink) -> None:
        found.update(await reader.wait(["doc"], 20.0, frozenset({"SUCCESS"})))

    async with (
        connected(open_broker(url, hub), open_broker(url, hub)) as (consumer, producer),
        connected(open_sink(url, hub), open_sink(url, hub)) as (reader, writer),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(fetch, consumer)
        tg.start_soon(wait, reader)
        await anyio.sleep(0.2)
        await anyio.to_thread.run_sync(server.stop)
        await anyio.sleep(1.0)
        await anyio.to_thread.run_sync(server.start)
        with anyio.fail_after(15):
            while True:
                try:
                    await producer.publish([Outgoing("q", "m", b"after the restart")])
                    await writer.store([StoredDocument("doc", "SUCCESS", b"{}")], None)
                    break
                except BrokerError:
                    await anyio.sleep(0.05)
    assert [d.body for d in got] == [b"after the restart"]
    assert list(found) == ["doc"]


async def test_options_are_checked_before_connecting() -> None:
    with pytest.raises(ConfigurationError, match="unknown option"):
        open_broker(f"{POSTGRES_URL}?visibility_timout=3", Hub())
    with pytest.raises(ConfigurationError, match="schema"):
        open_broker(f"{POSTGRES_URL}?schema=" + "x" * 64, Hub())
    with pytest.raises(ConfigurationError, match="pool_size"):
        open_sink(f"{POSTGRES_URL}?pool_size=0", Hub())


async def test_an_unreachable_server_is_a_broker_error_that_hides_the_password() -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        broker = open_broker(f"postgresql://me:s3cret@127.0.0.1:{port}/x?connect_timeout=1", Hub())
        with pytest.raises(BrokerError) as caught:
            await broker.connect()
        await broker.close()
    assert "s3cret" not in str(caught.value)
    assert "me:***@" in str(caught.value)


async def test_the_schema_is_created_once_with_its_version(url: str, schema: str) -> None:
    brokers = [open_broker(url, Hub()) for _ in range(3)]
    async with anyio.create_task_group() as tg:  # concurrent first connects do not race
        for broker in brokers:
            tg.start_soon(broker.connect)
    for broker in brokers:
        await broker.close()
    sink = open_sink(url, Hub())
    await sink.connect()
    await sink.close()
    query = f"SELECT value FROM \"{schema}\".celeriac_meta WHERE key = 'schema'"
    assert await anyio.to_thread.run_sync(postgres_sql, query) == "1"


async def test_a_schema_of_a_newer_version_is_refused(url: str, schema: str) -> None:
    broker = open_broker(url, Hub())
    await broker.connect()
    await broker.close()
    update = f"UPDATE \"{schema}\".celeriac_meta SET value = '99'"
    await anyio.to_thread.run_sync(postgres_sql, update)
    with pytest.raises(BrokerError, match="newer"):
        await broker.connect()


async def test_thousands_of_messages_move_in_one_publish_and_one_fetch(url: str) -> None:
    async with connected(open_broker(url, Hub())) as (broker,):
        sent = [Outgoing("q", f"m{n}", b"x", priority=n % 3) for n in range(3000)]
        await broker.publish(sent)
        got = await broker.fetch(["q"], 3000, 1.0)
        assert len(got) == 3000
        assert [d.priority for d in got] == sorted((d.priority for d in got), reverse=True)
        await broker.ack(got)
        assert (await broker.stats())["q"].ready == 0


async def test_a_delayed_message_wakes_its_fetch_without_polling(url: str) -> None:
    async with connected(open_broker(url, Hub())) as (broker,):
        eta = time.time() + 0.4
        await broker.publish([Outgoing("q", "later", b"x", eta=eta)])
        [d] = await broker.fetch(["q"], 1, 10.0)  # the safety poll is 30 s
        assert eta <= time.time() < eta + 3
        assert d.id == "later"
