"""redis:// : the broker and sink contracts, a server restart, and Redis specifics.

The contracts run on the shared Redis (127.0.0.1:6379), each test under a key
prefix of its own (deleted afterwards); the restart case runs on a redis-server
of its own (:mod:`server_redis`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from tests.brokers._scenarios import (
    check_a_delayed_message_comes_soon_after_its_eta,
    check_a_waiting_fetch_and_wait_wake_within_milliseconds,
)
from tests.brokers._server import spare_port
from tests.brokers._shared import REDIS_HOST, REDIS_PORT, connected, redis_namespace, returning
from tests.brokers.server_redis import RedisServer, make_certificates, redis_server_binary

from celeriac.abc import Outgoing, StoredDocument
from celeriac.brokers import Hub, open_broker
from celeriac.brokers.redis import RedisBroker
from celeriac.errors import BrokerError, ConfigurationError
from celeriac.sinks.redis import RedisSink
from celeriac.testing.conformance import BrokerConformance, SinkConformance
from celeriac.testing.restart import ServerRestartConformance


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A URL on the shared Redis with a key prefix of this test's own."""
    with redis_namespace() as url:
        yield url


class TestRedisBroker(BrokerConformance):
    broker_url = returning("redis_url")


class TestRedisSink(SinkConformance):
    sink_url = returning("redis_url")


class TestRedisServerRestart(ServerRestartConformance):
    @pytest.fixture
    def server(self, tmp_path: Path) -> Iterator[RedisServer]:
        binary = redis_server_binary()
        if binary is None:
            pytest.skip("redis-server is not installed")
        with RedisServer(tmp_path, binary) as server:
            yield server


# -- configuration --------------------------------------------------------------------


def test_the_url_names_server_database_and_options() -> None:
    broker = RedisBroker(
        "rediss://user:secret@redis.example:6380/3?prefix=app&visibility_timeout=5"
        "&socket_timeout=2&retry_timeout=1&max_connections=8&ssl_cert_reqs=none"
    )
    options = broker.options
    assert (options.host, options.port, options.db, options.tls) == ("redis.example", 6380, 3, True)
    assert (options.username, options.password, options.prefix) == ("user", "secret", "app")
    assert (broker.visibility_timeout, options.socket_timeout, options.retry_timeout) == (5, 2, 1)
    assert options.ssl_cert_reqs == "none"
    assert "secret" not in repr(broker)
    plain = RedisBroker("redis://")
    assert (plain.options.address, plain.prefix, plain.visibility_timeout) == (
        "127.0.0.1:6379/0",
        "celeriac",
        30.0,
    )
    # a sink takes its broker's URL as it is
    assert RedisSink("redis://h/2?visibility_timeout=5&prefix=app").options.db == 2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h/zero", "database number"),
        ("redis://h/0?prefix=", "prefix"),
        ("redis://h/0?prefix=a%20b", "prefix"),
        ("redis://h/0?visibilty_timeout=1", "unknown option"),
        ("redis://h/0?ssl_cert_reqs=none", "unknown option"),  # TLS options need rediss://
        ("redis://h/0?socket_timeout=0.1", "socket_timeout"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_broker(url, Hub())


@pytest.mark.anyio
async def test_an_unreachable_server_is_a_broker_error_after_retry_timeout() -> None:
    broker = open_broker(f"redis://127.0.0.1:{spare_port()}/0?retry_timeout=0.3", Hub())
    started = time.monotonic()
    with pytest.raises(BrokerError, match="unreachable") as info:
        await broker.connect()
    assert 0.25 <= time.monotonic() - started < 5
    assert isinstance(info.value.__cause__, redis.ConnectionError)


# -- how the broker uses Redis --------------------------------------------------------


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[RedisBroker]:
    async with connected(RedisBroker(redis_url)) as (broker,):
        yield broker


@pytest.fixture
def plain(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the shared Redis, to look at what the broker wrote."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    yield client
    client.close()


@pytest.mark.anyio
async def test_one_stream_per_priority_with_a_consumer_group(
    broker: RedisBroker, plain: redis.Redis
) -> None:
    p = broker.prefix
    await broker.publish([Outgoing("q", "low", b"1"), Outgoing("q", "high", b"2", priority=7)])
    assert plain.xlen(f"{p}:q:q:0") == plain.xlen(f"{p}:q:q:7") == 1
    got = await broker.fetch(["q"], 10, 1.0)
    assert [d.id for d in got] == ["high", "low"]
    for level in (0, 7):
        [group] = plain.xinfo_groups(f"{p}:q:q:{level}")
        assert (group["name"], group["pending"]) == (b"celeriac", 1)
        assert plain.zcard(f"{p}:q:q:{level}:lease") == 1
    await broker.ack(got)
    for level in (0, 7):  # acked entries are deleted: a stream holds what waits or runs
        assert plain.xlen(f"{p}:q:q:{level}") == 0
        assert plain.xpending(f"{p}:q:q:{level}", "celeriac")["pending"] == 0
        assert not plain.exists(f"{p}:q:q:{level}:lease")


@pytest.mark.anyio
async def test_an_entry_added_by_any_redis_client_is_delivered(
    broker: RedisBroker, plain: redis.Redis
) -> None:
    # A producer in another language needs no client library: XADD id and body.
    plain.xadd(f"{broker.prefix}:q:raw:4", {"i": "m-1", "b": b"\x00body"})
    [d] = await broker.fetch(["raw"], 10, 1.0)
    assert (d.id, d.body, d.priority, d.deliveries) == ("m-1", b"\x00body", 4, 1)


@pytest.mark.anyio
async def test_closing_removes_the_consumer_when_it_holds_nothing(
    redis_url: str, plain: redis.Redis
) -> None:
    holder, idle = RedisBroker(redis_url), RedisBroker(redis_url)
    await holder.connect()
    await idle.connect()
    await idle.publish([Outgoing("q", "a", b""), Outgoing("q", "b", b"")])
    [held] = await holder.fetch(["q"], 1, 1.0)
    [done] = await idle.fetch(["q"], 1, 1.0)
    await idle.ack([done])
    await idle.close()
    await holder.close()  # still holds a message: its consumer stays, with its entry
    consumers = plain.xinfo_consumers(f"{holder.prefix}:q:q:0", "celeriac")
    assert [(c["name"].decode(), c["pending"]) for c in consumers] == [(holder._consumer, 1)]
    assert held.id == "a"


@pytest.mark.anyio
async def test_a_waiting_fetch_and_wait_wake_within_milliseconds(redis_url: str) -> None:
    await check_a_waiting_fetch_and_wait_wake_within_milliseconds(redis_url)


@pytest.mark.anyio
async def test_a_delayed_message_comes_soon_after_its_eta(broker: RedisBroker) -> None:
    # The server ends a blocking read only on its cron tick (100 ms); we must not.
    await check_a_delayed_message_comes_soon_after_its_eta(broker)


# -- TLS ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_rediss_speaks_tls_and_checks_the_server_certificate(tmp_path: Path) -> None:
    binary = redis_server_binary()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs redis-server and openssl")
    certs = make_certificates(tmp_path / "certs")
    options = f"ssl_ca_certs={certs / 'ca.crt'}&retry_timeout=0.5"
    with RedisServer(tmp_path, binary, options=options, tls=certs) as server:
        async with (
            connected(RedisBroker(server.url)) as (broker,),
            connected(RedisSink(server.url)) as (sink,),
        ):
            await broker.publish([Outgoing("q", "m", b"secret")])
            [d] = await broker.fetch(["q"], 1, 1.0)
            await sink.store([StoredDocument("m", "SUCCESS", b"42")], ttl=60)
            await broker.ack([d])
            assert (await sink.get(["m"]))["m"].body == b"42"
        untrusted = RedisBroker(f"rediss://127.0.0.1:{server.port}/0?retry_timeout=0.2")
        with pytest.raises(BrokerError, match=r"(?i)certificate"):
            await untrusted.connect()
