"""amqp:// on RabbitMQ: the broker contract, server restarts, and what is RabbitMQ's own.

The shared server on 127.0.0.1:5672 runs the conformance suite, each test in a
namespace of its own. When ``rabbitmqctl`` works here, the session also gets a
vhost of its own, deleted at the end (which deletes every queue, stream and
exchange the tests made). The restart cases run on a node of their own (see
``server_amqp.py``), never on the shared one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from tests.apps.basic import make_app
from tests.brokers.server_amqp import RabbitServer, rabbitmq_server_binary

from celeriac import App
from celeriac.abc import Outgoing
from celeriac.brokers import Hub, open_broker
from celeriac.brokers.amqp import AmqpBroker
from celeriac.errors import BrokerError, ConfigurationError, TaskRevoked
from celeriac.testing.conformance import BrokerConformance, require_service, with_options
from celeriac.testing.restart import RestartableServer, ServerRestartConformance
from celeriac.worker.worker import Worker

HOST, PORT = "127.0.0.1", 5672

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
async def amqp_url(vhost: str) -> AsyncIterator[str]:
    """A fresh namespace on the shared server, deleted afterwards.

    Each quorum queue holds a few of the server's file handles, and RabbitMQ stops
    accepting connections when they run out: leave nothing behind.
    """
    require_service("rabbitmq", HOST, PORT)
    url = f"amqp://guest:guest@{HOST}:{PORT}/{vhost}?namespace=t{uuid.uuid4().hex[:12]}"
    yield url
    with anyio.CancelScope(shield=True):
        broker = AmqpBroker(url)
        await broker.connect()
        try:
            await broker.drop_namespace()
        finally:
            await broker.close()


class TestAmqpBroker(BrokerConformance):
    @pytest.fixture
    def broker_url(self, amqp_url: str) -> str:
        return amqp_url


# -- a node of our own, for restarts and crashes ----------------------------------------


@pytest.fixture(scope="module")
def own_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitServer]:
    binary = rabbitmq_server_binary()
    if binary is None:
        if os.environ.get("CELERIAC_REQUIRE_SERVICES") == "1":
            pytest.fail("rabbitmq-server is not installed and CELERIAC_REQUIRE_SERVICES=1")
        pytest.skip("rabbitmq-server is not installed here")
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
    broker = open_broker(url, Hub())
    await broker.connect()
    try:
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
    finally:
        await broker.close()
    assert got - {fresh.id} == wanted


# -- RabbitMQ's own ----------------------------------------------------------------------


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[AmqpBroker]:
    broker = AmqpBroker(amqp_url)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


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
    for _ in range(2):  # two consumers die holding it: returned twice
        consumer = AmqpBroker(url)
        await consumer.connect()
        if _ == 0:
            await consumer.publish([Outgoing("q", "poison", b"boom")])
        assert [d.id for d in await consumer.fetch(["q"], 1, 2.0)] == ["poison"]
        await consumer.close()
    reader = AmqpBroker(url)
    await reader.connect()
    try:
        with anyio.fail_after(10):
            while not (letters := await reader.dead_letters()):
                await anyio.sleep(0.05)
        assert [(lt.id, lt.queue, lt.body, lt.reason) for lt in letters] == [
            ("poison", "q", b"boom", "RabbitMQ: delivery_limit")
        ]
        assert await reader.fetch(["q"], 1, 0.2) == []
    finally:
        await reader.close()


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


# -- an app on RabbitMQ -----------------------------------------------------------------


@asynccontextmanager
async def _worker(app: App) -> AsyncIterator[Worker]:
    worker = app.worker(grace=2.0, heartbeat=0.2)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        async with app:
            yield worker
        worker.request_stop()
        await worker.wait_stopped()


async def test_an_app_runs_every_kind_of_task_through_a_worker_on_rabbitmq(
    amqp_url: str, tmp_path: Path
) -> None:
    # RabbitMQ keeps no results: the app names a sink of its own.
    app = make_app(amqp_url, sinks={"default": f"sqlite:///{tmp_path}/results.db"})
    log = tmp_path / "log"
    async with _worker(app):
        assert await app.send_task("basic.add", (1, 2)) == 3
        assert await app.send_task("basic.boxed_mul", (5, 6)) == 30
        started = anyio.current_time()
        assert await app.send_task("basic.add", (1, 1), countdown=0.4) == 2
        assert anyio.current_time() - started >= 0.35
        revoked = app.send_task("basic.record", (str(log), "x"), countdown=0.3)
        await revoked.revoke_async()
        with pytest.raises(TaskRevoked):
            await revoked.get_async(timeout=3)
        results = [app.send_task("basic.add", (n, n)) for n in range(200)]
        assert [await r.get_async(timeout=10) for r in results] == [2 * n for n in range(200)]
    assert not log.exists()


def test_an_app_on_rabbitmq_needs_a_sink_of_its_own() -> None:
    with pytest.raises(ConfigurationError, match="sink"):
        make_app("amqp://127.0.0.1/")
