"""The server-restart case of the broker contract, for backends with a server.

Subclass :class:`ServerRestartConformance` and provide a ``server`` fixture: an
object with ``url`` and blocking ``stop()``/``start()`` methods controlling a
server instance *of the test's own* (on a spare loopback port, never the shared
service). The test publishes through a real :class:`~celeriac.publisher.Publisher`
and consumes with a plain fetch/ack loop while the server is stopped and started
again, and checks that every message published before, during and after the
outage is consumed: nothing accepted is lost, and both sides reconnect by
themselves.
"""

from __future__ import annotations

import uuid
from typing import Protocol

import anyio
import anyio.to_thread
import pytest

from celeriac.abc import Outgoing
from celeriac.brokers import Hub, open_broker
from celeriac.errors import BrokerError
from celeriac.publisher import Publisher

__all__ = ["RestartableServer", "ServerRestartConformance"]


class RestartableServer(Protocol):
    """A broker server the test owns: its URL, and a way to stop and start it."""

    url: str

    def stop(self) -> None:
        """Stop the server (as a crash would: connections drop)."""

    def start(self) -> None:
        """Start it again on the same address and data; return once it accepts clients."""


class ServerRestartConformance:
    """Nothing published or consumed is lost across a restart of the server."""

    outage_seconds = 2.0
    recovery_seconds = 60.0

    @pytest.fixture
    def server(self) -> RestartableServer:
        """A restartable server of this test's own (provide it in a subclass)."""
        raise NotImplementedError("provide a server fixture")

    @pytest.mark.anyio
    async def test_nothing_is_lost_across_a_server_restart(self, server: RestartableServer) -> None:
        hub = Hub()
        producer = open_broker(server.url, hub)
        consumer = open_broker(server.url, hub)
        await producer.connect()
        await consumer.connect()
        queue = f"restart-{uuid.uuid4().hex[:8]}"
        publisher = Publisher({server.url: producer}, backoff=(0.05, 0.5))
        sent: list[str] = []
        received: set[str] = set()
        fetch_errors = 0
        last_error: BrokerError | None = None
        stats = "no stats"

        def submit(count: int) -> None:
            for _ in range(count):
                message = Outgoing(queue=queue, id=uuid.uuid4().hex, body=b"payload")
                sent.append(message.id)
                publisher.submit(server.url, message)

        async def consume() -> None:
            nonlocal fetch_errors, last_error
            while True:
                try:
                    deliveries = await consumer.fetch([queue], 100, 0.2)
                    if deliveries:
                        await consumer.ack(deliveries)
                        received.update(d.id for d in deliveries)
                except BrokerError as exc:
                    fetch_errors += 1
                    last_error = exc
                    await anyio.sleep(0.1)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(publisher.run)
                tg.start_soon(consume)
                submit(200)
                with anyio.fail_after(30):
                    while len(received) < 100:
                        await anyio.sleep(0.02)
                await anyio.to_thread.run_sync(server.stop)
                submit(200)  # into the publisher's backlog while the server is down
                await anyio.sleep(self.outage_seconds)
                await anyio.to_thread.run_sync(server.start)
                submit(200)
                with anyio.move_on_after(self.recovery_seconds):
                    while received != set(sent):
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            if received != set(sent):  # what the server says, for the failure's message
                with anyio.move_on_after(10):
                    try:
                        counts = (await consumer.stats())[queue]
                        stats = f"the server's count for the queue: {counts}"
                    except (BrokerError, KeyError) as exc:
                        stats = f"no stats: {exc!r}"
        finally:
            with anyio.CancelScope(shield=True):
                await producer.close()
                await consumer.close()
        missing = [i for i in sent if i not in received]
        assert not missing, (
            f"{len(missing)} of {len(sent)} messages never came back within"
            f" {self.recovery_seconds}s of the restart (positions {_spans(sent, missing)});"
            f" {fetch_errors} fetches failed, the last with {last_error!r};"
            f" {len(publisher)} still wait in the publisher; {stats}"
        )


def _spans(sent: list[str], missing: list[str]) -> str:
    """Where the missing messages were in publishing order, as ranges: ``0-99, 250``."""
    gone = set(missing)
    positions = [i for i, id in enumerate(sent) if id in gone]
    spans: list[str] = []
    start = prev = positions[0]
    for p in [*positions[1:], -2]:
        if p != prev + 1:
            spans.append(f"{start}-{prev}" if prev > start else str(start))
            start = p
        prev = p
    return ", ".join(spans)
