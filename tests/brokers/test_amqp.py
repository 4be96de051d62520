"""amqp:// on RabbitMQ: the broker contract, server restarts, and what is RabbitMQ's own.

The shared server on 127.0.0.1:5672 runs the conformance suite, each test in a
namespace of its own. When ``rabbitmqctl`` works here, the session also gets a
vhost of its own, deleted at the end (which deletes every queue, stream and
exchange the tests made). The restart cases run on a node of their own (see
``server_amqp.py``), never on the shared one.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from tests.apps.basic import make_app
from tests.brokers._shared import amqp_namespace, connected, returning, unavailable
from tests.brokers.server_amqp import RabbitServer, rabbitmq_server_binary

from celeriac.abc import Outgoing
from celeriac.brokers import Hub, open_broker
from celeriac.brokers.amqp import AmqpBroker
from celeriac.errors import BrokerError, ConfigurationError
from celeriac.testing.conformance import BrokerConformance, with_options
from celeriac.testing.restart import RestartableServer, ServerRestartConformance

pytestmark = [pytest.mark.anyio, pytest.mark.services("amqp")]


def _rabbitmqctl(*args: str) -> bool:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return False
    try:
        done = subprocess.run([ctl, "-q", *args], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def vhost() -> Iterator[str]:
    """A vhost for this session if ``rabbitmqctl`` can make one, else the default."""
    name = f"celeriac-test-{uuid.uuid4().hex[:8]}"
    if not (
        _rabbitmqctl("add_vhost", name)
        and _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    ):
        yield ""
        return
    yield name
    _rabbitmqctl("delete_vhost", name)


@pytest.fixture
def amqp_url(vhost: str) -> Iterator[str]:
    """A fresh namespace on the shared server (in this session's vhost), deleted afterwards."""
    with amqp_namespace(vhost) as url:
        yield url


class TestAmqpBroker(BrokerConformance):
    broker_url = returning("amqp_url")


# -- a node of our own, for restarts and crashes ----------------------------------------


@pytest.fixture(scope="module")
def own_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitServer]:
    binary = rabbitmq_server_binary()
    if binary is None:
        unavailable("rabbitmq-server is not installed here")
    node = RabbitServer(tmp_path_factory.mktemp("rabbitmq"), binary)
    node.start()
    try:
        yield node
    finally:
        node.kill()  # its data is thrown away: no need to wait for a clean shutdown


@pytest.fixture
def running_node(own_node: RabbitServer) -> RabbitServer:
    if not own_node._speaks_amqp():
        own_node.start()
    return own_node


class TestAmqpServerRestart(ServerRestartConformance):
    @pytest.fixture
    def server(self, running_node: RabbitServer) -> RestartableServer:
        return running_node


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # slow, and not about the loop
async def test_confirmed_messages_survive_a_crash_of_the_server(
    running_node: RabbitServer,
) -> None:
    # Quorum queues recover what they confirmed from their write-ahead log, except
    # on RabbitMQ 3.10 a quorum queue *created* within a second or so of a hard crash:
    # it comes back without a leader (its messages unreachable). The levels used
    # here exist well before the crash; a level made just before it must not stop
    # the others (the broker leaves it alone).
    url = with_options(running_node.url, namespace=f"crash{uuid.uuid4().hex[:6]}")
    early = [Outgoing("q", uuid.uuid4().hex, b"early", priority=n) for n in range(9)]
    sent = [Outgoing("q", uuid.uuid4().hex, b"%d" % n, priority=n % 9) for n in range(50)]
    fresh = Outgoing("q", uuid.uuid4().hex, b"fresh", priority=9)
    async with connected(open_broker(url, Hub())) as (broker,):
        await broker.publish(early)
        await anyio.sleep(2.5)  # well past the window
        await broker.publish(sent)
        await broker.publish([fresh])  # creates level 9 now
        await anyio.to_thread.run_sync(running_node.kill)
        await anyio.to_thread.run_sync(running_node.start)
        wanted = {m.id for m in early + sent}
        got: set[str] = set()
        with anyio.fail_after(60):
            while not wanted <= got:
                try:
                    deliveries = await broker.fetch(["q"], 100, 0.5)
                except BrokerError:
                    await anyio.sleep(0.2)
                    continue
                await broker.ack(deliveries)
                got.update(d.id for d in deliveries)
    assert got - {fresh.id} == wanted


# -- RabbitMQ's own ----------------------------------------------------------------------


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[AmqpBroker]:
    async with connected(AmqpBroker(amqp_url)) as (broker,):
        yield broker


async def test_a_delivery_from_a_lost_connection_is_fenced(broker: AmqpBroker) -> None:
    await broker.publish([Outgoing("q", "m", b"x")])
    [old] = await broker.fetch(["q"], 1, 2.0)
    conn = broker._link._conn
    assert conn is not None
    await broker._runner.call(conn.close)  # as if the network dropped it: RabbitMQ requeues it
    with anyio.fail_after(10):
        while True:
            try:
                [new] = await broker.fetch(["q"], 1, 1.0)
                break
            except (BrokerError, ValueError):
                await anyio.sleep(0.05)
    assert (new.id, new.deliveries) == ("m", 2)
    assert new.receipt != old.receipt
    await broker.ack([old])  # stale, but this instance holds the message now: finishes it
    await broker.nack([new])  # fenced: already finished, nothing is sent
    assert await broker.fetch(["q"], 1, 0.3) == []


async def test_rabbitmq_dead_letters_a_message_past_its_delivery_limit(amqp_url: str) -> None:
    url = with_options(amqp_url, delivery_limit=1)
    for n in range(2):  # two consumers die holding it: returned twice
        async with connected(AmqpBroker(url)) as (consumer,):
            if n == 0:
                await consumer.publish([Outgoing("q", "poison", b"boom")])
            assert [d.id for d in await consumer.fetch(["q"], 1, 2.0)] == ["poison"]
    async with connected(AmqpBroker(url)) as (reader,):
        with anyio.fail_after(10):
            while not (letters := await reader.dead_letters()):
                await anyio.sleep(0.05)
        assert [(lt.id, lt.queue, lt.body, lt.reason) for lt in letters] == [
            ("poison", "q", b"boom", "RabbitMQ: delivery_limit")
        ]
        assert await reader.fetch(["q"], 1, 0.2) == []


async def test_a_delay_is_kept_to_the_tick_whatever_else_waits(broker: AmqpBroker) -> None:
    # Per-message TTLs would make the short delay wait behind the long one.
    start = time.time()
    await broker.publish([Outgoing("q", "long", b"", eta=start + 30)])
    await broker.publish([Outgoing("q", "short", b"", eta=start + 0.2)])
    [d] = await broker.fetch(["q"], 10, 5.0)
    assert d.id == "short"
    assert start + 0.2 <= time.time() < start + 1.0


def test_url_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="unknown option"):
        AmqpBroker("amqp://127.0.0.1/?visibility=3")
    with pytest.raises(ConfigurationError, match="namespace"):
        AmqpBroker("amqp://127.0.0.1/?namespace=a.b")
    assert AmqpBroker("amqps://u:p@h/v?prefetch=10").url.startswith("amqps://")


async def test_connect_fails_with_a_broker_error_when_nobody_listens() -> None:
    broker = AmqpBroker("amqp://127.0.0.1:1/?connect_timeout=1")
    with pytest.raises(BrokerError, match="cannot connect"):
        await broker.connect()
    await broker.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_publish_fetch_ack_throughput(
    broker: AmqpBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    total = 5000
    sent = [Outgoing("q", str(n), b"x" * 100) for n in range(total)]
    started = time.perf_counter()
    for start in range(0, total, 500):
        await broker.publish(sent[start : start + 500])
    published = time.perf_counter()
    seen = 0
    while seen < total:
        got = await broker.fetch(["q"], 256, 1.0)
        await broker.ack(got)
        seen += len(got)
    done = time.perf_counter()
    with capsys.disabled():
        print(
            f"\namqp: publish {total / (published - started):.0f}/s,"
            f" fetch+ack {total / (done - published):.0f}/s"
        )


# -- an app on RabbitMQ (its scenarios: tests/worker/test_every_broker.py) -------------


def test_an_app_on_rabbitmq_needs_a_sink_of_its_own() -> None:
    with pytest.raises(ConfigurationError, match="sink"):
        make_app("amqp://127.0.0.1/")
