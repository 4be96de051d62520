"""Pull-style fetch over ``basic.consume``: one feed per logical queue, and its buffer.

RabbitMQ pushes; the :class:`~celeriac.abc.Broker` protocol pulls. For each
logical queue a broker instance fetches from, a :class:`Feed` consumes the
queue's priority levels, each on a channel of its own limited by the prefetch
(``basic.qos``), into one heap ordered by priority, then arrival. ``fetch`` takes
from the heaps; what it takes is held (see :mod:`._amqp_holds`).

* **Levels.** Only the priority levels in use exist. A feed consumes those that
  exist when it starts, and those the namespace's registry announces later. A
  level whose consume hangs or crashes (RabbitMQ 3.10 can leave a quorum queue
  created just before a crash without a leader) is left alone for a while; its
  own channel keeps the trouble away from the other levels.
* **Priming.** A new feed waits until what its queues had ready is in its heap,
  so the first fetch sees it in priority order.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage

from celeriac.abc import Delivery
from celeriac.brokers._amqp_bridge import Signal
from celeriac.brokers._amqp_holds import Consumer, Entry, Holds
from celeriac.brokers._amqp_link import Link
from celeriac.brokers._amqp_topology import LEVELS

__all__ = ["Feed", "Feeds"]

log = logging.getLogger("celeriac.brokers.amqp")

#: a healthy basic.consume answers in milliseconds
CONSUME_TIMEOUT = 5.0


class Feed:
    """The consumers and the heap of one logical queue (one generation)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.heap: list[tuple[int, int, Entry]] = []
        self.levels: dict[int, Consumer] = {}  # consuming, or subscribing
        self.primed = False


class Feeds:
    """Every feed of one link, and what it holds (see the module docstring)."""

    def __init__(
        self,
        link: Link,
        queue_name: Callable[[str, int], str],
        queue_args: dict[str, Any],
        visibility_timeout: float,
        revoked: Callable[[str, float], bool],
        redelay: Callable[[Entry, float], Awaitable[None]],
        known_levels: Callable[[str], set[int]],
    ) -> None:
        self.link = link
        self.queue_name = queue_name
        self.queue_args = queue_args
        self.visibility_timeout = visibility_timeout
        self.revoked = revoked
        self.redelay = redelay
        self.known_levels = known_levels
        self.arrived = Signal()
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._quarantine: dict[str, tuple[float, float]] = {}  # queue: (until, backoff)
        self.holds = Holds(visibility_timeout, self._consumer_lost)
        self._reset()
        link.on_down.append(self._reset)

    def _reset(self) -> None:
        # The connection is gone: RabbitMQ requeues all it had handed us.
        self.gen = self.link.gen
        self.feeds: dict[str, Feed] = {}
        self.holds.reset()
        self.arrived.notify()

    def start(self) -> None:
        """Start the lease reaper."""
        if self._reaper is None:
            self._reaper = self.link.spawn(self.holds.reap())

    async def stop(self) -> None:
        """Stop the reaper and the background work."""
        tasks = [t for t in (self._reaper, *self._tasks) if t is not None]
        self._reaper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- feeds and consumers --------------------------------------------------------------

    async def feed(self, name: str) -> Feed:
        """The started, primed feed of logical queue ``name``."""
        if self.gen != self.link.gen:
            self._reset()
        feed = self.feeds.get(name)
        if feed is not None and feed.primed:
            return feed
        return await self.link.once(("feed", name), partial(self._start, name))

    async def _start(self, name: str) -> Feed:
        gen = self.link.gen
        feed = self.feeds.setdefault(name, Feed(name))  # level_appeared finds it meanwhile
        queues = {self.queue_name(name, level): level for level in range(LEVELS)}
        existing = {queues[q] for q in await self.link.counts(queues)}
        registered = self.known_levels(name)
        levels = sorted(registered)  # in parallel: one that hangs does not hold up the rest
        counts = await asyncio.gather(*(self._consume(feed, level, gen) for level in levels))
        ready = dict(zip(levels, counts, strict=True))
        for level in existing - registered:
            # Not registered (yet): maybe still being created (see the broker's
            # _declare_level), or older than the registry's retention. Wait a little.
            self._spawn(self._consume_later(feed, level, gen, 1.0))
        # Prime: wait until what the queues had ready was pushed to us (or our
        # prefetch is full), then one more round trip on each consumer's channel,
        # which RabbitMQ answers after the deliveries it sent before.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        waiting = [c for level, n in ready.items() if n and (c := feed.levels.get(level))]
        admin = await self.link.admin()
        while waiting and loop.time() < deadline:
            await asyncio.sleep(0.002)
            still = []
            for consumer in waiting:
                queue = self.queue_name(name, consumer.level)
                ok = await admin.queue_declare(queue, durable=True, arguments=self.queue_args)
                if ok.message_count and len(consumer.unacked) < self.link.prefetch:
                    still.append(consumer)
            waiting = still
        await self.sync(feed)
        feed.primed = True
        return feed

    async def sync(self, feed: Feed) -> None:
        """A round trip on each channel of ``feed``: what was on its way is here after."""
        for consumer in list(feed.levels.values()):
            if consumer.channel is not None and consumer.alive:
                try:
                    await consumer.channel.basic_qos(prefetch_count=self.link.prefetch)
                except (aiormq.AMQPError, RuntimeError) as exc:
                    log.debug("consumer of %s lost: %r", feed.name, exc)
                    self._consumer_lost(consumer)

    async def _consume(self, feed: Feed, level: int, gen: int) -> int:
        """Consume one level of ``feed``; return how many messages it had ready."""
        if level in feed.levels or gen != self.gen:
            return 0
        queue = self.queue_name(feed.name, level)
        now = asyncio.get_running_loop().time()
        until, backoff = self._quarantine.get(queue, (0.0, 0.0))
        if now < until:
            self._spawn(self._consume_later(feed, level, gen, until - now))
            return 0
        consumer = feed.levels[level] = Consumer(feed, level)
        try:
            # Declared (as registered) on the admin channel, where a refusal (other
            # arguments) is reported without closing anything of ours.
            admin = await self.link.admin()
            ok = await admin.queue_declare(queue, durable=True, arguments=self.queue_args)
            channel, closer = await self.link.open_channel(
                self.link.prefetch, lambda: self._consumer_lost(consumer)
            )
            consumer.channel, consumer.closer = channel, closer
            await channel.basic_consume(
                queue,
                partial(self._receive, consumer),
                consumer_tag=f"celeriac.{uuid.uuid4().hex}",  # aiormq's come from ``random``
                timeout=CONSUME_TIMEOUT,
            )
        except BaseException as exc:
            self._consumer_lost(consumer)
            if _stuck(exc):
                backoff = min(max(backoff * 2, 30.0), 600.0)
                self._quarantine[queue] = (now + backoff, backoff)
                log.error(
                    "consuming %s failed (%r); trying again in %.0f s (RabbitMQ 3.10"
                    " leaves a quorum queue created just before a crash without a leader)",
                    queue,
                    exc,
                    backoff,
                )
                self._spawn(self._consume_later(feed, level, gen, backoff))
                return 0
            raise
        self._quarantine.pop(queue, None)
        return ok.message_count or 0

    async def _consume_later(self, feed: Feed, level: int, gen: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if gen == self.gen and self.feeds.get(feed.name) is feed:
            await self._consume(feed, level, gen)

    def level_appeared(self, name: str, level: int) -> None:
        """The registry announced a new priority level of ``name``: consume it too."""
        feed = self.feeds.get(name)
        if feed is not None and level not in feed.levels and self.gen == self.link.gen:
            self._spawn(self._consume(feed, level, self.gen))

    def _consumer_lost(self, consumer: Consumer) -> None:
        """The consumer's channel is gone: RabbitMQ requeued what it had sent."""
        if not consumer.alive:
            return
        consumer.alive = False
        feed = consumer.feed
        if feed.levels.get(consumer.level) is consumer:
            del feed.levels[consumer.level]
        feed.heap = [item for item in feed.heap if item[2].consumer is not consumer]
        heapq.heapify(feed.heap)
        for entry in consumer.unacked.values():
            self.holds.unhold(entry)
        consumer.unacked.clear()
        if consumer.closer is not None:
            self._spawn(consumer.closer())
        if self.feeds.get(feed.name) is feed and self.gen == self.link.gen:
            self._spawn(self._consume_later(feed, consumer.level, self.gen, 1.0))

    async def _receive(self, consumer: Consumer, message: DeliveredMessage) -> None:
        tag = message.delivery_tag
        if not consumer.alive or tag is None:
            return
        props = message.header.properties
        headers = props.headers or {}
        base, count, eta = (
            headers.get("cd", 0),
            headers.get("x-delivery-count", 0),
            headers.get("ce"),
        )
        entry = Entry(
            consumer,
            tag,
            props.message_id or "",
            message.body,
            (base if isinstance(base, int) else 0) + (count if isinstance(count, int) else 0) + 1,
            eta / 1000 if isinstance(eta, int) else None,
            next(self._seq),
        )
        consumer.unacked[tag] = entry
        heapq.heappush(consumer.feed.heap, (-consumer.level, entry.seq, entry))
        self.arrived.notify()

    # -- taking and holding -------------------------------------------------------------

    def take(self, feeds: Sequence[Feed], limit: int, now: float) -> list[Delivery]:
        """Hand out up to ``limit`` buffered messages: priority, then queue order, then FIFO.

        Synchronous, so a cancelled fetch cannot lose what it took. Revoked
        messages are dropped (acked); early ones (an eta beyond the delay chain's
        reach, or another clock) are sent round the delay chain again.
        """
        out: list[Delivery] = []
        clock = asyncio.get_running_loop().time()
        while len(out) < limit:
            best: Feed | None = None
            best_key = (0, 0)
            for rank, feed in enumerate(feeds):
                if feed.heap and (best is None or (feed.heap[0][0], rank) < best_key):
                    best, best_key = feed, (feed.heap[0][0], rank)
            if best is None:
                break
            entry = heapq.heappop(best.heap)[2]
            if self.revoked(entry.id, now):
                self._spawn(self.holds.write(self.holds.decide([entry], requeue=False)))
            elif entry.eta is not None and entry.eta > now:
                self._spawn(self._redelay(entry, entry.eta))
            else:
                out.append(self.holds.hold(entry, clock + self.visibility_timeout))
        return out

    def untake(self, deliveries: Sequence[Delivery]) -> None:
        """Put deliveries a cancelled fetch took back, as if never handed out."""
        for delivery in deliveries:
            entry = self.holds.release(delivery, by_id=False)
            if entry is not None and entry.consumer.alive:
                heapq.heappush(entry.consumer.feed.heap, (-entry.priority, entry.seq, entry))
        self.arrived.notify()

    def count(self, name: str) -> tuple[int, int]:
        """(buffered, held) deliveries of logical queue ``name`` here."""
        feed = self.feeds.get(name)
        buffered = len(feed.heap) if feed is not None else 0
        return buffered, self.holds.held_in(name)

    async def drop_buffered(self, name: str) -> int:
        """Ack (delete) the messages of ``name`` pushed here and not handed out."""
        feed = self.feeds.get(name)
        if feed is None:
            return 0
        await self.sync(feed)
        entries = [entry for _, _, entry in feed.heap]
        feed.heap = []
        await self.holds.write(self.holds.decide(entries, requeue=False))
        return len(entries)

    async def _redelay(self, entry: Entry, eta: float) -> None:
        entry.deliveries -= 1  # this early arrival was not handed out
        clock = asyncio.get_running_loop().time()
        await self.holds.settle_with(
            [self.holds.hold(entry, clock + self.visibility_timeout)],
            lambda entries: self.redelay(entries[0], eta),
            by_id=False,
        )

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.link.spawn(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background work failed: %r", task.exception())


def _stuck(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or its cause) is a command RabbitMQ did not answer, or crashed on."""
    while exc is not None:
        if isinstance(exc, TimeoutError | aiormq.exceptions.ConnectionInternalError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
