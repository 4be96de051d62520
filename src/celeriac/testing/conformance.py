"""The broker and data-sink contract as tests, run against every backend.

Subclass :class:`BrokerConformance` (or :class:`SinkConformance`) in a test module
and provide a ``broker_url`` (``sink_url``) fixture that names a fresh, empty store
for each test; every test of the contract in :mod:`celeriac.abc` then runs on your
backend::

    from celeriac.testing.conformance import BrokerConformance, require_service

    class TestMyBroker(BrokerConformance):
        @pytest.fixture
        def broker_url(self) -> str:
            require_service("mybroker", "127.0.0.1", 7777)
            return f"mybroker://127.0.0.1:7777/?namespace={uuid.uuid4().hex}"

The backend is opened through the scheme registry (so its entry point must be
installed) and must accept the URL option ``visibility_timeout`` (seconds), which
the lease tests set short. Tests are marked ``anyio``; define an ``anyio_backend``
fixture (``asyncio``, ``trio``) in your ``conftest.py``. Requires pytest, anyio's
pytest plugin and hypothesis. Call ``pytest.register_assert_rewrite(
"celeriac.testing.conformance")`` in your conftest for detailed assertion messages.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import celeriac.brokers
from celeriac.abc import (
    Broker,
    DataSink,
    Delivery,
    Outgoing,
    QueueStats,
    StoredDocument,
    WorkerInfo,
)
from celeriac.brokers import Hub, open_broker
from celeriac.sinks import open_sink

__all__ = ["BrokerConformance", "SinkConformance", "require_service", "with_options"]


def require_service(name: str, host: str, port: int, timeout: float = 0.5) -> None:
    """Skip the calling test when ``host:port`` does not answer.

    With ``CELERIAC_REQUIRE_SERVICES=1`` in the environment (CI), fail instead:
    a missing server must not pass silently there.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        message = f"{name} is not reachable at {host}:{port} ({exc})"
    if os.environ.get("CELERIAC_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " and CELERIAC_REQUIRE_SERVICES=1")
    pytest.skip(message)


def with_options(url: str, **options: object) -> str:
    """``url`` with these query-string options added (or replaced)."""
    base, _, query = url.partition("?")
    merged = dict(parse_qsl(query, keep_blank_values=True))
    merged.update({key: str(value) for key, value in options.items()})
    return f"{base}?{urlencode(merged)}"


def _out(queue: str, n: int = 0, **fields: Any) -> Outgoing:
    return Outgoing(
        queue=queue, id=f"{queue}-{n}-{uuid.uuid4().hex[:8]}", body=b"body-%d" % n, **fields
    )


async def _fetch_all(
    broker: Broker, queues: Sequence[str], count: int, within: float = 5.0
) -> list[Delivery]:
    """Fetch until ``count`` deliveries came (or ``within`` seconds passed)."""
    got: list[Delivery] = []
    with anyio.move_on_after(within):
        while len(got) < count:
            got += await broker.fetch(queues, count - len(got), within)
    return got


# Where ``celeriac`` is imported from, for the consumer subprocess.
_IMPORT_ROOT = str(Path(celeriac.brokers.__file__).resolve().parents[2])

# A consumer that fetches, reports what it holds, and waits to be SIGKILLed.
# It kills itself the moment it has said what it fetched: a kill sent from outside
# could come after the lease ran out in a live process (on RabbitMQ, whose leases
# are the client's, that returns and counts the delivery once more).
_DOOMED_CONSUMER = """
import os, signal, sys, anyio
from celeriac.brokers import Hub, open_broker

async def main(url, queue, count):
    broker = open_broker(url, Hub())
    await broker.connect()
    got = []
    while len(got) < count:
        got += await broker.fetch([queue], count - len(got), 5.0)
    print(" ".join(d.id for d in got), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


class BrokerConformance:
    """The :class:`~celeriac.abc.Broker` contract; subclass and provide ``broker_url``."""

    pytestmark = pytest.mark.anyio

    #: False for a backend whose store lives in one process (``memory://``): the
    #: tests that need a second process are skipped.
    shared_across_processes: ClassVar[bool] = True
    #: the visibility timeout (seconds) the lease tests put in the URL
    lease: ClassVar[float] = 0.25

    @pytest.fixture
    def broker_url(self) -> str:
        """A URL naming a fresh, empty store for this test (override this)."""
        raise NotImplementedError("provide a broker_url fixture")

    @pytest.fixture
    def hub(self) -> Hub:
        """The hub every broker of one test is opened with (as one App would)."""
        return Hub()

    @pytest.fixture
    def queue(self) -> str:
        """A queue name of this test's own."""
        return f"q-{uuid.uuid4().hex[:10]}"

    @asynccontextmanager
    async def opened(self, url: str, hub: Hub) -> AsyncIterator[Broker]:
        """A connected broker for ``url``, closed on exit."""
        broker = open_broker(url, hub)
        await broker.connect()
        try:
            yield broker
        finally:
            await broker.close()

    @pytest.fixture
    async def broker(self, broker_url: str, hub: Hub) -> AsyncIterator[Broker]:
        """A connected broker on this test's store."""
        async with self.opened(broker_url, hub) as broker:
            yield broker

    @pytest.fixture
    async def leasing(self, broker_url: str, hub: Hub) -> AsyncIterator[Broker]:
        """A second broker on the same store whose leases last only :attr:`lease`."""
        async with self.opened(with_options(broker_url, visibility_timeout=self.lease), hub) as b:
            yield b

    @pytest.fixture
    async def extending(self, broker_url: str, hub: Hub) -> AsyncIterator[Broker]:
        """Like :meth:`leasing`, with leases of twice :attr:`lease`: the extend tests
        need their ``extend`` to reach the broker before the lease it extends runs
        out, even when the machine stalls for a while between two calls."""
        visibility = self.lease * 2
        async with self.opened(with_options(broker_url, visibility_timeout=visibility), hub) as b:
            yield b

    # -- publish, fetch, ack --------------------------------------------------------------

    async def test_published_message_is_fetched_with_its_fields_then_acked_for_good(
        self, broker: Broker, queue: str
    ) -> None:
        body = bytes(range(256)) * 4
        out = Outgoing(queue=queue, id=uuid.uuid4().hex, body=body, priority=3)
        await broker.publish([out])
        [d] = await broker.fetch([queue], 10, 2.0)
        assert (d.queue, d.id, d.body, d.deliveries, d.priority) == (queue, out.id, body, 1, 3)
        await broker.ack([d])
        assert await broker.fetch([queue], 10, 0.0) == []
        assert (await broker.stats())[queue] == QueueStats(ready=0, delayed=0, in_flight=0)

    async def test_fetch_hands_out_at_most_limit(self, broker: Broker, queue: str) -> None:
        await broker.publish([_out(queue, n) for n in range(5)])
        first = await broker.fetch([queue], 2, 1.0)
        assert 1 <= len(first) <= 2
        assert len(first) + len(await _fetch_all(broker, [queue], 5 - len(first))) == 5

    async def test_fetch_only_from_the_queues_named(self, broker: Broker, queue: str) -> None:
        await broker.publish([_out(queue + "-other")])
        assert await broker.fetch([queue], 10, 0.05) == []

    async def test_fetch_returns_nothing_after_its_timeout(
        self, broker: Broker, queue: str
    ) -> None:
        started = time.monotonic()
        assert await broker.fetch([queue], 10, 0.1) == []
        assert 0.08 <= time.monotonic() - started < 2.0

    async def test_waiting_fetch_wakes_when_another_instance_publishes(
        self, broker: Broker, broker_url: str, hub: Hub, queue: str
    ) -> None:
        got: list[Delivery] = []
        arrived = anyio.Event()

        async def consume() -> None:
            got.extend(await broker.fetch([queue], 10, 10.0))
            arrived.set()

        async with self.opened(broker_url, hub) as producer, anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.sleep(0.1)
            started = time.monotonic()
            await producer.publish([_out(queue)])
            with anyio.fail_after(5):
                await arrived.wait()
            assert time.monotonic() - started < 2  # woken, not left to its 10 s timeout
        assert len(got) == 1

    async def test_messages_survive_closing_the_instance_that_published_them(
        self, broker_url: str, hub: Hub, queue: str
    ) -> None:
        async with self.opened(broker_url, hub) as producer:
            await producer.publish([_out(queue, n) for n in range(3)])
        async with self.opened(broker_url, hub) as consumer:
            assert len(await _fetch_all(consumer, [queue], 3)) == 3

    async def test_empty_batches_are_accepted(self, broker: Broker) -> None:
        await broker.publish([])
        await broker.ack([])
        await broker.nack([])
        await broker.extend([], 1.0)
        await broker.dead_letter([], "nothing")
        assert await broker.replay([]) == 0

    # -- nack, leases, redelivery -----------------------------------------------------------

    async def test_nacked_message_is_delivered_again_at_once(
        self, broker: Broker, queue: str
    ) -> None:
        await broker.publish([_out(queue)])
        [first] = await broker.fetch([queue], 1, 2.0)
        await broker.nack([first])
        [again] = await broker.fetch([queue], 1, 2.0)
        assert (again.id, again.body, again.deliveries) == (first.id, first.body, 2)
        assert again.receipt != first.receipt  # a receipt names one delivery

    async def test_nack_with_delay_holds_the_message_back(self, broker: Broker, queue: str) -> None:
        await broker.publish([_out(queue)])
        [first] = await broker.fetch([queue], 1, 2.0)
        due = time.time() + 0.3  # the delay starts after this
        await broker.nack([first], delay=0.3)
        early = await broker.fetch([queue], 1, 0.0)
        stats = (await broker.stats())[queue]
        if time.time() < due:  # read before it was due (unless the machine stalled that long)
            assert early == []
            assert stats == QueueStats(ready=0, delayed=1, in_flight=0)
        [again] = early or await broker.fetch([queue], 1, 5.0)
        assert time.time() >= due - 0.01
        assert (again.id, again.deliveries) == (first.id, 2)

    async def test_unacked_message_is_delivered_again_when_its_lease_expires(
        self, leasing: Broker, queue: str
    ) -> None:
        await leasing.publish([_out(queue)])
        started = time.monotonic()  # the lease starts after this
        [first] = await leasing.fetch([queue], 1, 2.0)
        # Not handed out again before the lease ran out: neither at once (unless the
        # machine stalled that long, which the bound below allows) nor while waiting.
        early = await leasing.fetch([queue], 1, 0.0)
        [again] = early or await leasing.fetch([queue], 1, self.lease + 3.0)
        assert time.monotonic() - started >= self.lease * 0.9
        assert (again.id, again.deliveries) == (first.id, 2)
        await leasing.ack([again])

    async def test_extend_keeps_the_lease(self, extending: Broker, queue: str) -> None:
        lease = self.lease * 2  # extending's
        extension = lease * 2.5  # well past the first lease and a redelivery after it
        await extending.publish([_out(queue)])
        [held] = await extending.fetch([queue], 1, 2.0)
        started = time.monotonic()  # the extension starts after this
        await extending.extend([held], extension)
        # Handed out again once the extension ran out, not when the first lease did.
        [again] = await extending.fetch([queue], 1, extension + 3.0)
        assert time.monotonic() - started >= extension * 0.9
        assert (again.id, again.deliveries) == (held.id, 2)

    async def test_a_stale_delivery_cannot_nack_or_extend_the_current_one(
        self, extending: Broker, broker: Broker, queue: str
    ) -> None:
        lease = self.lease * 2  # extending's
        await extending.publish([_out(queue)])
        [stale] = await extending.fetch([queue], 1, 2.0)
        [current] = await extending.fetch([queue], 1, lease + 3.0)  # after the lease ran out
        assert current.deliveries == 2
        await extending.extend([current], 60.0)
        await extending.nack([stale])
        await extending.extend([stale], 0.0)
        assert await broker.fetch([queue], 1, self.lease) == []
        await extending.ack([current])

    async def test_redelivery_after_the_consumer_process_is_killed(
        self, broker_url: str, leasing: Broker, queue: str
    ) -> None:
        if not self.shared_across_processes:
            pytest.skip("this backend's store lives in one process")
        if sys.platform == "win32":
            pytest.skip("needs SIGKILL")
        sent = [_out(queue, n) for n in range(3)]
        await leasing.publish(sent)
        path = os.pathsep.join([_IMPORT_ROOT, os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, PYTHONPATH=path)
        url = with_options(broker_url, visibility_timeout=self.lease)
        command = [sys.executable, "-c", _DOOMED_CONSUMER, url, queue, str(len(sent))]
        async with await anyio.open_process(command, env=env) as process:
            assert process.stdout is not None
            line = b""
            with anyio.fail_after(30):
                while not line.endswith(b"\n"):
                    line += await process.stdout.receive()
                assert await process.wait() == -signal.SIGKILL
        assert sorted(line.decode().split()) == sorted(m.id for m in sent)
        again = await _fetch_all(leasing, [queue], len(sent), within=self.lease + 5.0)
        assert sorted(d.id for d in again) == sorted(m.id for m in sent)
        assert {d.deliveries for d in again} == {2}

    async def test_a_cancelled_fetch_loses_nothing(
        self, broker: Broker, broker_url: str, hub: Hub, queue: str
    ) -> None:
        # Cancel fetches at random moments around a message's arrival: whatever a
        # cancelled fetch had claimed must be due again at once, not counted as a delivery.
        rng = random.Random(7)
        sent = [_out(queue, n) for n in range(60)]
        acked: list[str] = []
        async with self.opened(broker_url, hub) as producer:
            for out in sent:

                async def publish(out: Outgoing = out) -> None:
                    await anyio.sleep(rng.random() * 0.002)
                    await producer.publish([out])

                got: list[Delivery] = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(publish)
                    with anyio.move_on_after(rng.random() * 0.003):
                        got = await broker.fetch([queue], 1, 2.0)
                await broker.ack(got)
                acked += [d.id for d in got]
        rest = await _fetch_all(broker, [queue], len(sent) - len(acked), within=2.0)
        assert {d.deliveries for d in rest} <= {1}
        assert sorted(acked + [d.id for d in rest]) == sorted(m.id for m in sent)

    # -- delays and order ---------------------------------------------------------------------

    async def test_delayed_message_is_not_delivered_before_its_eta(
        self, broker: Broker, queue: str
    ) -> None:
        eta = time.time() + 0.3
        await broker.publish([_out(queue, eta=eta)])
        early = await broker.fetch([queue], 1, 0.0)
        stats = (await broker.stats())[queue]
        if time.time() < eta:  # read before the eta (unless the machine stalled that long)
            assert early == []
            assert stats == QueueStats(ready=0, delayed=1, in_flight=0)
        [d] = early or await broker.fetch([queue], 1, 5.0)
        assert time.time() >= eta
        assert d.deliveries == 1

    async def test_eta_in_the_past_is_due_at_once(self, broker: Broker, queue: str) -> None:
        await broker.publish([_out(queue, eta=time.time() - 60)])
        assert len(await broker.fetch([queue], 1, 1.0)) == 1

    async def test_higher_priority_first_then_publish_order(
        self, broker: Broker, queue: str
    ) -> None:
        sent = [_out(queue, n, priority=p) for n, p in enumerate([0, 5, 9, 1, 5, 0, 9])]
        await broker.publish(sent[:4])
        await broker.publish(sent[4:])
        got = await _fetch_all(broker, [queue], len(sent))
        expected = sorted(range(len(sent)), key=lambda n: (-sent[n].priority, n))
        assert [d.id for d in got] == [sent[n].id for n in expected]

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        batches=st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=12), max_size=5),
        limit=st.integers(1, 7),
    )
    async def test_order_is_priority_then_fifo_for_any_publishes(
        self, broker: Broker, batches: list[list[int]], limit: int
    ) -> None:
        queue = f"prop-{uuid.uuid4().hex[:10]}"
        sent = [_out(queue, n, priority=p) for n, p in enumerate(p for b in batches for p in b)]
        start = 0
        for batch in batches:
            await broker.publish(sent[start : start + len(batch)])
            start += len(batch)
        got: list[Delivery] = []
        while batch_got := await broker.fetch([queue], limit, 0.0):
            assert len(batch_got) <= limit
            got += batch_got
        expected = sorted(range(len(sent)), key=lambda n: (-sent[n].priority, n))
        assert [d.id for d in got] == [sent[n].id for n in expected]

    async def test_queues_named_first_win_ties_but_not_priority(
        self, broker: Broker, queue: str
    ) -> None:
        other = queue + "-b"
        await broker.publish([_out(queue, 1, priority=5), _out(other, 2, priority=5)])
        await broker.publish([_out(queue, 3, priority=7), _out(other, 4, priority=1)])
        got = await _fetch_all(broker, [other, queue], 4)
        assert [d.body for d in got] == [b"body-3", b"body-2", b"body-1", b"body-4"]

    # -- revocation -----------------------------------------------------------------------------

    async def test_revoked_message_is_never_delivered(self, broker: Broker, queue: str) -> None:
        keep, drop = _out(queue, 1), _out(queue, 2)
        await broker.publish([drop, keep])
        await broker.revoke([drop.id], ttl=60)
        got = await broker.fetch([queue], 10, 1.0)
        assert [d.id for d in got] == [keep.id]
        await broker.ack(got)
        assert await broker.fetch([queue], 10, 0.0) == []
        assert (await broker.stats())[queue].ready == 0

    async def test_revoked_since_reports_each_revocation_once(self, broker: Broker) -> None:
        first, second = uuid.uuid4().hex, uuid.uuid4().hex
        await broker.revoke([first], ttl=60)
        ids, cursor = await broker.revoked_since(None)
        assert ids == [first]
        await broker.revoke([second], ttl=60)
        ids, cursor = await broker.revoked_since(cursor)
        assert ids == [second]
        assert (await broker.revoked_since(cursor))[0] == []

    async def test_a_revocation_expires_after_its_ttl(self, broker: Broker, queue: str) -> None:
        out = _out(queue)
        await broker.revoke([out.id], ttl=0.15)
        await anyio.sleep(0.25)
        assert out.id not in (await broker.revoked_since(None))[0]
        await broker.publish([out])
        assert [d.id for d in await broker.fetch([queue], 1, 1.0)] == [out.id]

    # -- dead letters ---------------------------------------------------------------------------

    async def test_dead_letters_are_listed_newest_first_replayed_and_purged(
        self, broker: Broker, queue: str
    ) -> None:
        sent = [_out(queue, n, priority=n) for n in range(3)]
        await broker.publish(sent)
        got = await _fetch_all(broker, [queue], 3)  # highest priority first: 2, 1, 0
        for d in got:
            await broker.dead_letter([d], reason=f"bad {d.id}")
        assert await broker.fetch([queue], 10, 0.0) == []
        assert (await broker.stats())[queue].in_flight == 0
        letters = await broker.dead_letters()
        assert [lt.id for lt in letters] == [sent[0].id, sent[1].id, sent[2].id]
        assert [(lt.queue, lt.body, lt.reason, lt.deliveries) for lt in letters[:1]] == [
            (queue, sent[0].body, f"bad {sent[0].id}", 1)
        ]
        assert [lt.id for lt in await broker.dead_letters(limit=1)] == [sent[0].id]
        assert await broker.replay([sent[1].id, "no-such-id"]) == 1
        [again] = await broker.fetch([queue], 10, 1.0)
        assert (again.id, again.body, again.priority, again.deliveries) == (
            sent[1].id,
            sent[1].body,
            1,
            1,
        )
        assert [lt.id for lt in await broker.dead_letters()] == [sent[0].id, sent[2].id]
        assert await broker.purge_dead_letters() == 2
        assert await broker.dead_letters() == []

    # -- stats and purge ----------------------------------------------------------------------

    async def test_stats_count_ready_delayed_and_in_flight(
        self, broker: Broker, queue: str
    ) -> None:
        later = time.time() + 60
        await broker.publish([_out(queue, n) for n in range(3)])
        await broker.publish([_out(queue, n, eta=later) for n in range(3, 5)])
        await broker.fetch([queue], 1, 1.0)
        assert (await broker.stats())[queue] == QueueStats(ready=2, delayed=2, in_flight=1)

    async def test_purge_deletes_what_waits_not_what_is_in_flight(
        self, broker: Broker, queue: str
    ) -> None:
        await broker.publish([_out(queue, n) for n in range(3)])
        await broker.publish([_out(queue, 3, eta=time.time() + 60)])
        held = await broker.fetch([queue], 1, 1.0)
        assert await broker.purge(queue) == 3
        assert await broker.fetch([queue], 10, 0.0) == []
        await broker.ack(held)
        assert (await broker.stats())[queue] == QueueStats(ready=0, delayed=0, in_flight=0)

    # -- workers ------------------------------------------------------------------------------

    async def test_heartbeats_list_live_workers_until_they_expire_or_are_forgotten(
        self, broker: Broker
    ) -> None:
        now, started = time.time(), time.monotonic()  # b's ttl starts after this
        a = WorkerInfo("a", "host", 1, ["q"], started_at=now, seen_at=now)
        b = WorkerInfo("b", "host", 2, ["q", "r"], started_at=now, seen_at=now, loop="trio")
        await broker.heartbeat(a, ttl=60)
        await broker.heartbeat(b, ttl=0.3)
        a2 = WorkerInfo("a", "host", 1, ["q"], started_at=now, seen_at=now + 1, processed=7)
        await broker.heartbeat(a2, ttl=60)
        listed = sorted(await broker.workers(), key=lambda w: w.name)
        if time.monotonic() - started < 0.3:  # within b's ttl (unless the machine stalled)
            assert listed == [a2, b]
        else:
            assert listed in ([a2], [a2, b])
        await anyio.sleep(0.4)
        assert await broker.workers() == [a2]
        await broker.forget_worker("a")
        assert await broker.workers() == []

    # -- load ---------------------------------------------------------------------------------

    async def test_ten_thousand_messages_none_lost_none_duplicated(
        self, broker_url: str, hub: Hub, queue: str
    ) -> None:
        total, seen = 10_000, list[str]()
        sent = [_out(queue, n, priority=n % 3) for n in range(total)]
        done = anyio.Event()

        async def produce(broker: Broker) -> None:
            for start in range(0, total, 500):
                await broker.publish(sent[start : start + 500])

        async def consume(broker: Broker) -> None:
            while not done.is_set():
                got = await broker.fetch([queue], 100, 0.05)
                seen.extend(d.id for d in got)
                await broker.ack(got)
                if len(seen) >= total:
                    done.set()

        async with anyio.create_task_group() as tg:
            brokers = [await tg.start(self._serve, broker_url, hub) for _ in range(5)]
            # Consumers and the producer finish before the brokers close.
            with anyio.fail_after(60):
                async with anyio.create_task_group() as work:
                    for broker in brokers[:4]:
                        work.start_soon(consume, broker)
                    work.start_soon(produce, brokers[4])
            tg.cancel_scope.cancel()
        assert len(seen) == total
        assert set(seen) == {m.id for m in sent}

    async def _serve(self, url: str, hub: Hub, *, task_status: Any) -> None:
        async with self.opened(url, hub) as broker:
            task_status.started(broker)
            await anyio.sleep_forever()


class SinkConformance:
    """The :class:`~celeriac.abc.DataSink` contract; subclass and provide ``sink_url``."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def sink_url(self) -> str:
        """A URL naming a fresh, empty store for this test (override this)."""
        raise NotImplementedError("provide a sink_url fixture")

    @pytest.fixture
    def hub(self) -> Hub:
        """The hub every sink of one test is opened with (as one App would)."""
        return Hub()

    @asynccontextmanager
    async def opened(self, url: str, hub: Hub) -> AsyncIterator[DataSink]:
        """A connected sink for ``url``, closed on exit."""
        sink = open_sink(url, hub)
        await sink.connect()
        try:
            yield sink
        finally:
            await sink.close()

    @pytest.fixture
    async def sink(self, sink_url: str, hub: Hub) -> AsyncIterator[DataSink]:
        """A connected sink on this test's store."""
        async with self.opened(sink_url, hub) as sink:
            yield sink

    @pytest.fixture
    def doc(self) -> Callable[..., StoredDocument]:
        """Makes documents with ids of this test's own."""
        prefix = uuid.uuid4().hex[:10]

        def make(key: str, state: str = "SUCCESS", body: bytes = b"{}") -> StoredDocument:
            return StoredDocument(f"{prefix}-{key}", state, body)

        return make

    async def test_stored_documents_are_read_back(
        self, sink: DataSink, doc: Callable[..., StoredDocument]
    ) -> None:
        a, b = doc("a", body=bytes(range(256))), doc("b", "FAILURE", b'{"x": 1}')
        await sink.store([a, b], ttl=None)
        assert await sink.get([a.id, b.id, doc("missing").id]) == {a.id: a, b.id: b}
        assert await sink.get([]) == {}

    async def test_store_replaces_a_document_with_the_same_id(
        self, sink: DataSink, doc: Callable[..., StoredDocument]
    ) -> None:
        await sink.store([doc("a", "STARTED", b"1")], ttl=None)
        await sink.store([doc("a", "SUCCESS", b"2")], ttl=None)
        assert await sink.get([doc("a").id]) == {doc("a").id: doc("a", "SUCCESS", b"2")}

    async def test_store_if_absent_never_replaces_a_live_document(
        self, sink: DataSink, doc: Callable[..., StoredDocument]
    ) -> None:
        await sink.store([doc("a", body=b"first")], ttl=None)
        await sink.store_if_absent([doc("a", body=b"second"), doc("b", body=b"new")], ttl=None)
        assert await sink.get([doc("a").id, doc("b").id]) == {
            doc("a").id: doc("a", body=b"first"),
            doc("b").id: doc("b", body=b"new"),
        }

    async def test_an_expired_document_is_gone_and_counts_as_absent(
        self, sink: DataSink, doc: Callable[..., StoredDocument]
    ) -> None:
        started = time.monotonic()  # a's ttl starts after this
        await sink.store([doc("a", body=b"old")], ttl=0.3)
        await sink.store([doc("b")], ttl=60)
        found = set(await sink.get([doc("a").id, doc("b").id]))
        if time.monotonic() - started < 0.3:  # within a's ttl (unless the machine stalled)
            assert found == {doc("a").id, doc("b").id}
        else:
            assert doc("b").id in found
        await anyio.sleep(0.4)
        assert set(await sink.get([doc("a").id, doc("b").id])) == {doc("b").id}
        await sink.store_if_absent([doc("a", body=b"new")], ttl=None)
        assert await sink.get([doc("a").id]) == {doc("a").id: doc("a", body=b"new")}

    async def test_forget_deletes_documents(
        self, sink: DataSink, doc: Callable[..., StoredDocument]
    ) -> None:
        await sink.store([doc("a"), doc("b")], ttl=None)
        await sink.forget([doc("a").id, doc("missing").id])
        assert set(await sink.get([doc("a").id, doc("b").id])) == {doc("b").id}

    async def test_wait_returns_at_once_what_is_there(
        self, sink: DataSink, doc: Callable[..., StoredDocument]
    ) -> None:
        await sink.store([doc("a")], ttl=None)
        with anyio.fail_after(1):
            found = await sink.wait([doc("a").id, doc("b").id], 30.0, frozenset({"SUCCESS"}))
        assert found == {doc("a").id: doc("a")}

    async def test_wait_times_out_with_nothing(
        self, sink: DataSink, doc: Callable[..., StoredDocument]
    ) -> None:
        started = time.monotonic()
        assert await sink.wait([doc("a").id], 0.1, frozenset({"SUCCESS"})) == {}
        assert 0.08 <= time.monotonic() - started < 2.0

    async def test_wait_wakes_when_another_instance_stores_a_wanted_state(
        self, sink: DataSink, sink_url: str, hub: Hub, doc: Callable[..., StoredDocument]
    ) -> None:
        found: dict[str, StoredDocument] = {}
        arrived = anyio.Event()

        async def wait() -> None:
            found.update(await sink.wait([doc("a").id], 10.0, frozenset({"SUCCESS", "FAILURE"})))
            arrived.set()

        async with self.opened(sink_url, hub) as writer, anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.1)
            await writer.store([doc("a", "STARTED")], ttl=None)  # not a wanted state
            await anyio.sleep(0.1)
            assert found == {}
            started = time.monotonic()
            await writer.store([doc("a", "FAILURE")], ttl=None)
            with anyio.fail_after(5):
                await arrived.wait()
            assert time.monotonic() - started < 2  # woken, not left to its 10 s timeout
        assert found == {doc("a").id: doc("a", "FAILURE")}

    @pytest.mark.parametrize("size", [10, 1024, 1025, 256 * 1024])
    async def test_a_waiter_gets_the_whole_document_of_any_size(
        self,
        sink: DataSink,
        sink_url: str,
        hub: Hub,
        doc: Callable[..., StoredDocument],
        size: int,
    ) -> None:
        # Backends may carry small bodies in their wake-up and read large ones.
        stored = doc("big", "SUCCESS", body=bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        found: dict[str, StoredDocument] = {}

        async def wait() -> None:
            found.update(await sink.wait([stored.id], 10.0, frozenset({"SUCCESS"})))

        async with self.opened(sink_url, hub) as writer, anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.05)
            await writer.store([stored], ttl=60)
        assert found == {stored.id: stored}

    async def test_many_documents_in_one_call(
        self, sink: DataSink, doc: Callable[..., StoredDocument]
    ) -> None:
        docs = [doc(str(n), body=b"%d" % n) for n in range(2000)]
        await sink.store(docs, ttl=600)
        assert await sink.get([d.id for d in docs]) == {d.id: d for d in docs}
        await sink.forget([d.id for d in docs])
        assert await sink.get([d.id for d in docs]) == {}
