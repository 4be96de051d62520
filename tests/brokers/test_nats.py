"""nats:// : the broker and sink contracts, a server restart, and JetStream specifics.

The contracts run on the shared NATS server (127.0.0.1:4222, JetStream on), each
test in a namespace of its own (its streams deleted afterwards); the restart case
runs on a nats-server of its own (:mod:`server_nats`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy
from tests.brokers._scenarios import (
    check_a_delayed_message_comes_soon_after_its_eta,
    check_a_waiting_fetch_and_wait_wake_within_milliseconds,
)
from tests.brokers._server import spare_port
from tests.brokers._shared import NATS_HOST, NATS_PORT, connected, nats_namespace, returning
from tests.brokers.server_nats import NatsServer, nats_server_binary

from celeriac.abc import Outgoing, QueueStats
from celeriac.brokers import Hub, open_broker
from celeriac.brokers._nats import token, untoken
from celeriac.brokers.nats import NatsBroker
from celeriac.errors import BrokerError, ConfigurationError
from celeriac.sinks.nats import NatsSink
from celeriac.testing.conformance import BrokerConformance, SinkConformance
from celeriac.testing.restart import ServerRestartConformance


@pytest.fixture
def nats_url() -> Iterator[str]:
    """A URL on the shared NATS server with a namespace of this test's own."""
    with nats_namespace() as url:
        yield url


class TestNatsBroker(BrokerConformance):
    broker_url = returning("nats_url")


class TestNatsSink(SinkConformance):
    sink_url = returning("nats_url")


class TestNatsServerRestart(ServerRestartConformance):
    @pytest.fixture
    def server(self, tmp_path: Path) -> Iterator[NatsServer]:
        binary = nats_server_binary()
        if binary is None:
            pytest.skip("nats-server is not installed")
        # A message delivered just before the kill whose reply was lost with the
        # connection is leased until AckWait runs out: 5 s here, not the 30 s default,
        # so the test does not wait on the lease but on the reconnection.
        with NatsServer(tmp_path, binary, options="visibility_timeout=5") as server:
            yield server


# -- configuration --------------------------------------------------------------------


def test_the_url_names_server_namespace_and_options() -> None:
    broker = NatsBroker(
        "nats://user:secret@nats.example:4333/?namespace=app&visibility_timeout=5"
        "&max_deliveries=4&dedup_window=30&poll_interval=0.1&storage=memory&replicas=3"
        "&request_timeout=2&reconnect_wait=0.5&ping_interval=5&tls=true"
    )
    options = broker._options
    assert (options.server, options.user, options.password) == (
        "tls://nats.example:4333",
        "user",
        "secret",
    )
    assert (options.namespace, options.storage, options.replicas) == ("app", "memory", 3)
    assert (broker.visibility_timeout, broker.max_deliveries, broker.dedup_window) == (5, 4, 30)
    assert "secret" not in repr(broker)
    plain = NatsBroker("nats://")
    assert (plain._options.server, plain._options.namespace, plain.visibility_timeout) == (
        "nats://127.0.0.1:4222",
        "celeriac",
        30.0,
    )
    assert plain.max_deliveries == 0
    # a sink takes its broker's URL as it is
    assert NatsSink("nats://h/?namespace=app&visibility_timeout=5&max_deliveries=3")._bucket == (
        "app_results"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nats://h/?namespace=a.b", "namespace"),
        ("nats://h/?namespace=", "namespace"),
        ("nats://h/path", "no path"),
        ("nats://h/?visibilty_timeout=1", "unknown option"),
        ("nats://h/?storage=disk", "storage"),
        ("nats://h/?replicas=0", "replicas"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_broker(url, Hub())


def test_names_of_any_characters_become_subject_tokens_reversibly() -> None:
    for name in ["default", "a-b_c", "jobs.high", "with space", "é/ü*>", "=x", "", "x" * 300]:
        tok = token(name)
        assert tok
        assert untoken(tok) == name
        assert not any(c in tok for c in ". *>\t\r\n")


@pytest.mark.anyio
async def test_an_unreachable_server_is_a_broker_error() -> None:
    broker = open_broker(f"nats://127.0.0.1:{spare_port()}/?connect_timeout=0.3", Hub())
    started = time.monotonic()
    with pytest.raises(BrokerError, match="no NATS server answered"):
        await broker.connect()
    assert time.monotonic() - started < 5


# -- how the broker uses JetStream ------------------------------------------------------


@pytest.fixture
async def broker(nats_url: str) -> AsyncIterator[NatsBroker]:
    async with connected(NatsBroker(nats_url)) as (broker,):
        yield broker


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """A plain JetStream client on the shared server, to look at what the broker wrote."""
    nc = await nats.connect(f"nats://{NATS_HOST}:{NATS_PORT}")
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


def _namespace(url: str) -> str:
    return url.rsplit("namespace=", 1)[1].split("&")[0]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the plain client needs asyncio
async def test_a_work_queue_stream_with_a_durable_consumer_per_priority(
    broker: NatsBroker, js: JetStreamContext, nats_url: str
) -> None:
    ns = _namespace(nats_url)
    await broker.publish([Outgoing("q", "low", b"1"), Outgoing("q", "high", b"2", priority=7)])
    info = await js.stream_info(f"{ns}_tasks", subjects_filter=f"{ns}.q.>")
    assert info.config.retention == RetentionPolicy.WORK_QUEUE
    assert info.state.subjects == {f"{ns}.q.q.0": 1, f"{ns}.q.q.7": 1}
    got = await broker.fetch(["q"], 10, 1.0)
    assert [d.id for d in got] == ["high", "low"]
    consumer = await js.consumer_info(f"{ns}_tasks", "q_7")
    assert (consumer.config.ack_wait, consumer.config.filter_subject) == (30.0, f"{ns}.q.q.7")
    assert (consumer.num_ack_pending, consumer.num_pending) == (1, 0)
    await broker.ack(got)
    assert (await js.stream_info(f"{ns}_tasks")).state.messages == 0  # acked: deleted


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_message_published_by_a_plain_jetstream_client_is_delivered(
    broker: NatsBroker, js: JetStreamContext, nats_url: str
) -> None:
    # A producer in another language needs no celeriac: publish with Nats-Msg-Id = id.
    ns = _namespace(nats_url)
    await broker.fetch(["raw"], 1, 0)  # (consumers are declared by the first fetch)
    await js.publish(f"{ns}.q.raw.4", b"\x00body", headers={"Nats-Msg-Id": "m-1"})
    [d] = await broker.fetch(["raw"], 10, 1.0)
    assert (d.id, d.body, d.priority, d.deliveries) == ("m-1", b"\x00body", 4, 1)


@pytest.mark.anyio
async def test_a_message_published_twice_within_the_dedup_window_is_stored_once(
    broker: NatsBroker,
) -> None:
    out = Outgoing("q", uuid.uuid4().hex, b"once")
    await broker.publish([out])
    await broker.publish([out, out])  # a publisher retrying after a lost confirm
    assert (await broker.stats())["q"].ready == 1
    assert [d.id for d in await broker.fetch(["q"], 10, 0.5)] == [out.id]


@pytest.mark.anyio
async def test_queue_names_and_ids_of_any_characters(broker: NatsBroker) -> None:
    queue, id = "jobs.high priority/é", "id with.dots and spaces"
    await broker.publish([Outgoing(queue, id, b"x", priority=3)])
    assert (await broker.stats())[queue].ready == 1
    [d] = await broker.fetch([queue], 1, 1.0)
    assert (d.queue, d.id, d.priority) == (queue, id, 3)
    await broker.dead_letter([d], "bad\nreason: é")
    [letter] = await broker.dead_letters()
    assert (letter.id, letter.queue, letter.reason) == (id, queue, "bad\nreason: é")
    assert await broker.replay([id]) == 1
    assert [d.id for d in await broker.fetch([queue], 1, 1.0)] == [id]


@pytest.mark.anyio
async def test_a_message_delivered_max_deliveries_times_is_dead_lettered(
    nats_url: str,
) -> None:
    url = f"{nats_url}&visibility_timeout=0.2&max_deliveries=2"
    async with connected(NatsBroker(url)) as (broker,):
        await broker.publish([Outgoing("q", "poison", b"boom")])
        for n in (1, 2):  # a consumer that dies each time: the lease runs out
            [d] = await broker.fetch(["q"], 1, 3.0)
            assert d.deliveries == n
        assert await broker.fetch(["q"], 1, 1.0) == []  # the third delivery: dead-lettered
        [letter] = await broker.dead_letters()
        assert (letter.id, letter.body, letter.deliveries) == ("poison", b"boom", 3)
        assert "max_deliveries=2" in letter.reason
        assert (await broker.stats())["q"] == QueueStats(ready=0, delayed=0, in_flight=0)


@pytest.mark.anyio
async def test_deliveries_count_on_across_a_delayed_nack(broker: NatsBroker) -> None:
    await broker.publish([Outgoing("q", "m", b"x", priority=2)])
    for n in (1, 2, 3):
        [d] = await broker.fetch(["q"], 1, 3.0)
        assert (d.id, d.deliveries, d.priority) == ("m", n, 2)
        await broker.nack([d], delay=0.05 if n % 2 else 0.0)


@pytest.mark.anyio
async def test_a_delayed_message_comes_soon_after_its_eta(broker: NatsBroker) -> None:
    # The server hands a nak'ed message back at its delay: no polling on our side.
    await check_a_delayed_message_comes_soon_after_its_eta(broker)


@pytest.mark.anyio
async def test_a_waiting_fetch_and_wait_wake_within_milliseconds(nats_url: str) -> None:
    await check_a_waiting_fetch_and_wait_wake_within_milliseconds(nats_url)
