"""nats:// : the broker and sink contracts, a server restart, and JetStream specifics.

The contracts run on the shared NATS server (127.0.0.1:4222, JetStream on), each
test in a namespace of its own (its streams deleted afterwards); the restart case
runs on a nats-server of its own (:mod:`server_nats`).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import nats
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy
from tests.apps.basic import make_app
from tests.brokers.server_nats import NatsServer, nats_server_binary

from celeriac import App, TaskRevoked, Worker
from celeriac.abc import Outgoing, QueueStats, StoredDocument
from celeriac.brokers import Hub, open_broker
from celeriac.brokers._nats import token, untoken
from celeriac.brokers.nats import NatsBroker
from celeriac.errors import BrokerError, ConfigurationError
from celeriac.sinks.nats import NatsSink
from celeriac.testing.conformance import BrokerConformance, SinkConformance, require_service
from celeriac.testing.restart import ServerRestartConformance

HOST, PORT = "127.0.0.1", 4222


def _drop_namespace(namespace: str) -> None:
    """Delete the streams of ``namespace`` on the shared server (in a thread: no loop here)."""

    async def drop() -> None:
        nc = await nats.connect(f"nats://{HOST}:{PORT}")
        try:
            js = nc.jetstream()
            for stream in ("tasks", "delayed", "dead"):
                try:
                    await js.delete_stream(f"{namespace}_{stream}")
                except nats.js.errors.NotFoundError:
                    pass
            for bucket in ("revoked", "workers", "results"):
                try:
                    await js.delete_stream(f"KV_{namespace}_{bucket}")
                except nats.js.errors.NotFoundError:
                    pass
        finally:
            await nc.close()

    thread = threading.Thread(target=asyncio.run, args=(drop(),))
    thread.start()
    thread.join(30)


@pytest.fixture
def nats_url() -> Iterator[str]:
    """A URL on the shared NATS server with a namespace of this test's own."""
    require_service("nats", HOST, PORT)
    namespace = f"t{uuid.uuid4().hex[:12]}"
    yield f"nats://{HOST}:{PORT}/?namespace={namespace}"
    _drop_namespace(namespace)


class TestNatsBroker(BrokerConformance):
    @pytest.fixture
    def broker_url(self, nats_url: str) -> str:
        return nats_url


class TestNatsSink(SinkConformance):
    @pytest.fixture
    def sink_url(self, nats_url: str) -> str:
        return nats_url


class TestNatsServerRestart(ServerRestartConformance):
    @pytest.fixture
    def server(self, tmp_path: Path) -> Iterator[NatsServer]:
        binary = nats_server_binary()
        if binary is None:
            pytest.skip("nats-server is not installed")
        with NatsServer(tmp_path, binary) as server:
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
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    broker = open_broker(f"nats://127.0.0.1:{port}/?connect_timeout=0.3", Hub())
    started = time.monotonic()
    with pytest.raises(BrokerError, match="no NATS server answered"):
        await broker.connect()
    assert time.monotonic() - started < 5


# -- how the broker uses JetStream ------------------------------------------------------


@pytest.fixture
async def broker(nats_url: str) -> AsyncIterator[NatsBroker]:
    broker = NatsBroker(nats_url)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """A plain JetStream client on the shared server, to look at what the broker wrote."""
    nc = await nats.connect(f"nats://{HOST}:{PORT}")
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
    broker = NatsBroker(f"{nats_url}&visibility_timeout=0.2&max_deliveries=2")
    await broker.connect()
    try:
        await broker.publish([Outgoing("q", "poison", b"boom")])
        for n in (1, 2):  # a consumer that dies each time: the lease runs out
            [d] = await broker.fetch(["q"], 1, 3.0)
            assert d.deliveries == n
        assert await broker.fetch(["q"], 1, 1.0) == []  # the third delivery: dead-lettered
        [letter] = await broker.dead_letters()
        assert (letter.id, letter.body, letter.deliveries) == ("poison", b"boom", 3)
        assert "max_deliveries=2" in letter.reason
        assert (await broker.stats())["q"] == QueueStats(ready=0, delayed=0, in_flight=0)
    finally:
        await broker.close()


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
    late: list[float] = []
    for n in range(3):
        eta = time.time() + 0.15
        await broker.publish([Outgoing("q", str(n), b"", eta=eta)])
        [d] = await broker.fetch(["q"], 1, 2.0)
        late.append(time.time() - eta)
        await broker.ack([d])
    assert min(late) >= 0
    assert statistics.median(late) < 0.05


@pytest.mark.anyio
async def test_a_waiting_fetch_and_wait_wake_within_milliseconds(nats_url: str) -> None:
    consumer, producer = NatsBroker(nats_url), NatsBroker(nats_url)
    waiter, writer = NatsSink(nats_url), NatsSink(nats_url)
    for backend in (consumer, producer, waiter, writer):
        await backend.connect()
    fetched: list[float] = []
    woken: list[float] = []

    async def consume() -> None:
        while len(fetched) < 15:
            [d] = await consumer.fetch(["q"], 1, 5.0)
            fetched.append(time.time() - float(d.body))
            await consumer.ack([d])

    async def wait() -> None:
        for n in range(15):
            found = await waiter.wait([f"doc-{n}"], 5.0, frozenset({"SUCCESS"}))
            woken.append(time.time() - float(found[f"doc-{n}"].body))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            tg.start_soon(wait)
            for n in range(15):
                await anyio.sleep(0.01)
                now = str(time.time()).encode()
                await producer.publish([Outgoing("q", str(n), now)])
                await writer.store([StoredDocument(f"doc-{n}", "SUCCESS", now)], ttl=60)
    finally:
        for backend in (consumer, producer, waiter, writer):
            await backend.close()
    assert statistics.median(fetched) < 0.02
    assert statistics.median(woken) < 0.02


# -- an app on NATS -------------------------------------------------------------------


@asynccontextmanager
async def _worker(app: App) -> AsyncIterator[Worker]:
    worker = app.worker(grace=2.0, heartbeat=0.2)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        async with app:
            yield worker
        worker.request_stop()
        await worker.wait_stopped()


@pytest.mark.anyio
async def test_an_app_runs_every_kind_of_task_through_a_worker_on_nats(
    nats_url: str, tmp_path: Path
) -> None:
    app = make_app(nats_url)  # results in the same namespace's key-value bucket
    log = tmp_path / "log"
    async with _worker(app):
        assert await app.send_task("basic.add", (1, 2)) == 3
        assert await app.send_task("basic.mul", (3, 4)) == 12
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
