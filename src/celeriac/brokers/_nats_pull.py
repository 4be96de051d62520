"""The consuming side of the NATS broker: work consumers, pulls, the buffer, leases.

Everything here runs in the client's loop (see :mod:`celeriac.brokers._nats_client`).

* **Levels.** Each (queue, priority) of the work stream has a durable pull
  consumer, ``<queue>_<priority>``: explicit acks, ``AckWait`` = the broker's
  ``visibility_timeout`` (the instance that declares a level last sets it) and no
  ``MaxDeliver`` (the broker counts deliveries itself, across re-publishes).
* **Pulls.** All pull requests of one broker share one reply subscription. A
  delivered message arrives on its stream subject, which names its level; a status
  reply (``404`` nothing there, ``408`` request over) on the request's own inbox.
  A level has at most one request at a time, so every reply has an owner.
* **The buffer.** A message that arrives when its request has been given up (the
  fetch was cancelled or timed out) is not lost: it stays leased, kept alive by
  in-progress acks, and the next fetch hands it out first, counted once. Closing
  the broker releases (naks) what is still buffered.
* **The keeper** sends ``+WPI`` (in progress: resets ``AckWait``) every third of
  the visibility timeout for buffered deliveries and for deliveries extended
  beyond one ``AckWait``.
* **Fencing.** JetStream acks name the stream sequence, not the delivery, so a
  late ``nak`` would take a message back from its new owner. The broker remembers
  the newest delivery of each message it handed out and ignores a nack or extend
  of an older one (within this broker instance; see ``docs/brokers.md``).

Delayed messages are :mod:`celeriac.brokers._nats_delays`' business; their pull
replies come through the same subscription and are handed over to its mover.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress

import anyio
import nats.errors
from nats.aio.msg import Msg

from celeriac.abc import Delivery
from celeriac.brokers._nats import Names, Receipt, nanos, receipt, status_of, untoken
from celeriac.brokers._nats_client import NatsConnection
from celeriac.brokers._nats_delays import Mover
from celeriac.errors import BrokerError

__all__ = ["PRIORITIES", "Consumers", "Got", "Level"]

log = logging.getLogger("celeriac.nats")

#: a delivery and its stream sequence (the order within a level)
Got = tuple[int, Delivery]

PRIORITIES = range(9, -1, -1)  # fetched highest first
_FENCE_LIMIT = 200_000


class _Request:
    __slots__ = ("batch", "done", "got", "open")

    def __init__(self, batch: int, done: asyncio.Future[None]) -> None:
        self.batch = batch
        self.got: list[Got] = []
        self.done = done
        self.open = True

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Level:
    """One (queue, priority) of the work stream: its consumer, request and buffer."""

    __slots__ = ("buffer", "consumer", "inbox", "lock", "next", "priority", "queue", "request")

    def __init__(self, queue: str, priority: int, consumer: str, next: str, inbox: str) -> None:
        self.queue = queue
        self.priority = priority
        self.consumer = consumer
        self.next = next
        self.inbox = inbox
        self.lock = asyncio.Lock()
        self.request: _Request | None = None
        self.buffer: list[Got] = []


class Consumers:
    """Levels, pulls, buffer and keeper of one broker (see the module docstring)."""

    def __init__(self, conn: NatsConnection, names: Names, ack_wait: float) -> None:
        self._conn = conn
        self._names = names
        self.ack_wait = ack_wait
        self._levels: dict[str, list[Level]] = {}  # queue -> levels by priority
        self._by_subject: dict[str, Level] = {}
        self._by_inbox: dict[str, Level] = {}
        self._declared: set[str] = set()
        self._epoch = -1
        self._inbox = conn.new_inbox()  # pull replies: <inbox>.<level> and <inbox>.m
        self._latest: dict[tuple[str, int], int] = {}  # (consumer, sseq) -> newest dseq
        self._kept: dict[Receipt, float] = {}  # receipt -> keep until (monotonic)
        self._tasks: list[asyncio.Task[None]] = []
        self.mover = Mover(conn, names, self._inbox + ".m")
        self._delay_prefix = f"{names.ns}.d."

    async def start(self) -> None:
        """Subscribe to pull replies and start the keeper."""
        # A reply dropped here (a "slow consumer") would wait out its lease: room for plenty.
        await self._conn.client.subscribe(
            self._inbox + ".*", cb=self._on_msg, pending_bytes_limit=1 << 30
        )
        self._tasks.append(asyncio.get_running_loop().create_task(self._keep()))

    async def stop(self) -> None:
        """Stop the keeper and the mover; release (nak) what the buffer still holds."""
        await self.mover.stop()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        buffered = [d for levels in self._levels.values() for lv in levels for _, d in lv.buffer]
        for levels in self._levels.values():
            for level in levels:
                level.buffer = []
        if buffered:  # not connected: they come back when their lease runs out
            client = self._conn.client
            for delivery in buffered:
                await client.publish(delivery.receipt.subject, b"-NAK")
            await client.flush()

    # -- levels -----------------------------------------------------------------------------

    async def levels(self, queues: Sequence[str]) -> list[list[Level]]:
        """The levels of ``queues`` (by priority), their consumers declared."""
        if self._epoch != self._conn.epoch:
            self._declared.clear()  # a restarted server may have lost them (memory storage)
            self._epoch = self._conn.epoch
        missing = [q for q in queues if q not in self._declared]
        if missing:
            await self._declare(missing)
        return [self._levels[q] for q in queues]

    async def _declare(self, queues: list[str]) -> None:
        names, stream = self._names, self._names.tasks
        requests = []
        for queue in queues:
            if queue not in self._levels:
                self._levels[queue] = [self._new_level(queue, p) for p in range(10)]
            for level in self._levels[queue]:
                config = {
                    "durable_name": level.consumer,
                    "filter_subject": names.task(queue, level.priority),
                    "deliver_policy": "all",
                    "ack_policy": "explicit",
                    "ack_wait": nanos(self.ack_wait),
                    "max_deliver": -1,
                    "max_ack_pending": -1,
                    "max_waiting": 512,
                    "replay_policy": "instant",
                }
                body = {"stream_name": stream, "config": config}
                subject = f"CONSUMER.DURABLE.CREATE.{stream}.{level.consumer}"
                requests.append(self._conn.api(subject, body))
        await asyncio.gather(*requests)
        self._declared.update(queues)

    def _new_level(self, queue: str, priority: int) -> Level:
        subject = self._names.task(queue, priority)
        consumer = f"{subject.split('.')[2]}_{priority}"
        next = f"$JS.API.CONSUMER.MSG.NEXT.{self._names.tasks}.{consumer}"
        level = Level(queue, priority, consumer, next, f"{self._inbox}.{len(self._by_inbox)}")
        self._by_subject[subject] = level
        self._by_inbox[level.inbox] = level
        return level

    # -- pulls and the buffer ---------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        if status_of(msg) is not None:
            if msg.subject == self._inbox + ".m":
                self.mover.request_over()
                return
            owner = self._by_inbox.get(msg.subject)
            if owner is not None and owner.request is not None:
                owner.request.finish()
            return
        level = self._by_subject.get(msg.subject)
        if level is None:
            if msg.subject.startswith(self._delay_prefix):
                self.mover.deliver(msg)
            return
        got = self._got(level, msg)
        request = level.request
        if request is not None and request.open:
            request.got.append(got)
            if len(request.got) >= request.batch:
                request.finish()
        else:
            level.buffer.append(got)

    @staticmethod
    def _got(level: Level, msg: Msg) -> Got:
        ack = receipt(msg.reply)
        sseq, count = ack.stream_seq, ack.delivered
        headers = msg.headers or {}
        id = headers.get("Celeriac-Id") or headers.get("Nats-Msg-Id") or f"{level.consumer}:{sseq}"
        prior = headers.get("Celeriac-Deliveries")
        if prior:
            count += int(prior)
        return sseq, Delivery(level.queue, untoken(id), msg.data, count, ack, level.priority)

    def take(self, level: Level, limit: int) -> list[Got]:
        """Up to ``limit`` buffered deliveries of ``level``, oldest first."""
        if not level.buffer:
            return []
        level.buffer.sort(key=lambda got: got[0])
        taken, level.buffer = level.buffer[:limit], level.buffer[limit:]
        return taken

    def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Put deliveries handed out by a fetch whose caller is gone back in the buffer."""
        for delivery in deliveries:
            level = self._levels[delivery.queue][delivery.priority]
            level.buffer.append((delivery.receipt.stream_seq, delivery))

    async def pull(self, level: Level, batch: int) -> list[Got]:
        """Up to ``batch`` messages of ``level`` that are due now (no waiting)."""
        async with level.lock:
            request = _Request(batch, asyncio.get_running_loop().create_future())
            level.request = request
            try:
                payload = b'{"batch":%d,"no_wait":true}' % batch
                await self._conn.client.publish(level.next, payload, reply=level.inbox)
                async with asyncio.timeout(self._conn.options.request_timeout):
                    await request.done
                return request.got
            except TimeoutError:
                raise BrokerError(
                    f"{self._conn.options.display}: no answer to a pull from {level.consumer!r}"
                ) from None
            finally:
                request.open = False
                level.request = None
                if request.done.cancelled() or not request.done.done():
                    level.buffer.extend(request.got)  # given up: kept for the next fetch

    @asynccontextmanager
    async def watching(self, queues: Sequence[str]) -> AsyncIterator[asyncio.Event]:
        """An event set whenever something may have become due in ``queues``.

        Subscribes (core NATS) to the queues' work subjects, which sees every
        publish, and to their bells (nacks); leases running out are not announced:
        the caller polls for those.
        """
        event = asyncio.Event()

        async def ring(_: Msg) -> None:
            event.set()

        client = self._conn.client
        subs = []
        try:
            for queue in queues:
                subject = self._names.task(queue, 0)[:-1] + "*"
                subs.append(await client.subscribe(subject, cb=ring))
                subs.append(await client.subscribe(self._names.bell(queue), cb=ring))
            yield event
        finally:
            with anyio.CancelScope(shield=True):
                for sub in subs:
                    with suppress(nats.errors.Error):
                        await sub.unsubscribe()

    # -- leases -----------------------------------------------------------------------------

    def handed_out(self, deliveries: Sequence[Delivery]) -> None:
        """Remember these as the newest deliveries of their messages (for fencing)."""
        latest = self._latest
        for delivery in deliveries:
            ack: Receipt = delivery.receipt
            latest[ack.consumer, ack.stream_seq] = ack.delivery_seq
        if len(latest) > _FENCE_LIMIT:  # deliveries never settled here: forget the oldest
            for key in list(latest)[: _FENCE_LIMIT // 10]:
                del latest[key]

    def current(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Those of ``deliveries`` that no newer delivery (seen here) has replaced."""
        latest, out = self._latest, []
        for delivery in deliveries:
            ack: Receipt = delivery.receipt
            if latest.get((ack.consumer, ack.stream_seq), ack.delivery_seq) <= ack.delivery_seq:
                out.append(delivery)
        return out

    def settled(self, deliveries: Sequence[Delivery]) -> None:
        """Forget what was kept about these deliveries (acked, nacked, dead-lettered)."""
        latest, kept = self._latest, self._kept
        for delivery in deliveries:
            ack: Receipt = delivery.receipt
            if latest.get((ack.consumer, ack.stream_seq)) == ack.delivery_seq:
                del latest[ack.consumer, ack.stream_seq]
            kept.pop(ack, None)

    def keep(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Keep sending in-progress acks for these for ``seconds``, if beyond one AckWait."""
        until = time.monotonic() + seconds
        for delivery in deliveries:
            if seconds > self.ack_wait:  # one +WPI (just sent) covers up to AckWait
                self._kept[delivery.receipt] = until
            else:
                self._kept.pop(delivery.receipt, None)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(max(0.02, self.ack_wait / 3))
            now = time.monotonic()
            kept = self._kept
            for ack in [r for r, until in kept.items() if until <= now]:
                del kept[ack]
            receipts = list(kept)
            for levels in self._levels.values():
                receipts += [d.receipt for level in levels for _, d in level.buffer]
            try:
                client = self._conn.client
                for ack in receipts:
                    await client.publish(ack.subject, b"+WPI")
            except (BrokerError, nats.errors.Error) as exc:
                log.debug("in-progress acks not sent: %r", exc)
