"""``amqp://`` and ``amqps://``: RabbitMQ (3.10+) through aio-pika.

Everything a namespace (URL option ``namespace``) needs lives in RabbitMQ:

* **Queues** (:mod:`._amqp_topology`): one durable *quorum* queue per logical queue
  and priority in use. Quorum queues have no priorities in 3.10 (classic ones do,
  but cannot count redeliveries after a crash, which quorum queues report as
  ``x-delivery-count``: ``deliveries`` is that plus one). Publishing waits for
  publisher confirms: a confirmed message is on disk.
* **Consuming** (:mod:`._amqp_feed`, :mod:`._amqp_holds`): ``basic.consume`` with a prefetch per
  priority level into local heaps that ``fetch`` takes from, highest priority
  first; client-side leases (a reaper requeues what is not acked or extended in
  time); RabbitMQ requeues what a dead connection held.
* **Delays** (:mod:`._amqp_topology`): a chain of quorum queues with queue TTLs,
  powers of two of 10 ms, dead-lettering from one to the next.
* **Records** (:mod:`._amqp_records`): streams every instance folds: the registry
  and revocations (``{ns}.control``), dead letters (``{ns}.dead``, fed by the
  dead-letter exchange ``{ns}.dlx``) and heartbeats (``{ns}.workers``).

URL options: ``namespace`` (default ``celeriac``), ``visibility_timeout`` (30 s),
``prefetch`` (256, per priority level and consumer), ``heartbeat`` (15 s),
``connect_timeout`` (10 s), ``delivery_limit`` (20 returns, 0: none),
``dead_letter_retention`` (14 days, in seconds); ``cafile``, ``certfile``,
``keyfile`` for ``amqps://``. The URL's path is the vhost.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import aiormq
import anyio
from pamqp import commands as spec

from celeriac.abc import DeadLetter, Delivery, Outgoing, QueueStats, WorkerInfo
from celeriac.brokers._amqp_bridge import Runner
from celeriac.brokers._amqp_feed import Feeds
from celeriac.brokers._amqp_holds import Entry
from celeriac.brokers._amqp_link import Link, Publish
from celeriac.brokers._amqp_records import Records
from celeriac.brokers._amqp_topology import LEVELS, Topology
from celeriac.brokers._hub import Hub
from celeriac.brokers._url import BackendURL
from celeriac.errors import BrokerError, ConfigurationError

__all__ = ["AmqpBroker"]

T = TypeVar("T")

# Link.once keys that are not declarations, kept when declarations are forgotten.
_KEEP = frozenset({"feed", "read", "registered"})


class AmqpBroker:
    """A broker on RabbitMQ (see the module docstring)."""

    def __init__(self, url: str, hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        self.url = url
        self.visibility_timeout = parsed.number("visibility_timeout", 30.0)
        self.namespace = ns = parsed.text("namespace", "celeriac")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", ns):
            raise ConfigurationError(f"{url!r}: namespace must be 1-64 of A-Z a-z 0-9 _ -")
        prefetch = parsed.integer("prefetch", 256, minimum=1)
        heartbeat = parsed.integer("heartbeat", 15, minimum=0)
        connect_timeout = parsed.number("connect_timeout", 10.0, minimum=0.1)
        delivery_limit = parsed.integer("delivery_limit", 20)
        retention = parsed.integer("dead_letter_retention", 14 * 86400, minimum=60)
        tls = {k: v for k in ("cafile", "certfile", "keyfile") if (v := parsed.text(k, ""))}
        parsed.finish()
        auth = quote(parsed.username or "guest", safe="") + ":"
        auth += quote(parsed.password or "guest", safe="")
        vhost = quote(parsed.path[1:] if parsed.path.startswith("/") else "/", safe="")
        query = urlencode({"heartbeat": heartbeat, "name": f"celeriac {ns}", **tls})
        port = parsed.port or (5671 if parsed.scheme == "amqps" else 5672)
        client = f"{parsed.scheme}://{auth}@{parsed.host or '127.0.0.1'}:{port}/{vhost}?{query}"

        self._runner = Runner()
        self._link = Link(client, prefetch=prefetch, connect_timeout=connect_timeout)
        self._records = Records(
            self._link,
            ns,
            dead_letter_retention=retention,
            delivery_limit=delivery_limit,
            on_level=lambda queue, level: self._feeds.level_appeared(queue, level),
        )
        self._topology = topology = Topology(self._link, self._records, ns, delivery_limit)
        self._feeds = Feeds(
            self._link,
            topology.work_queue,
            topology.work_args,
            self.visibility_timeout,
            self._records.is_revoked,
            self._redelay,
            lambda queue: self._records.levels.get(queue, set()),
        )

    def __repr__(self) -> str:
        return f"<AmqpBroker {self.url!r}>"

    async def _call(
        self,
        fn: Callable[..., Coroutine[Any, Any, T]],
        *args: Any,
        undo: Callable[[T], None] | None = None,
    ) -> T:
        """Run ``fn`` on the client's loop; the client's errors become BrokerError."""
        try:
            return await self._runner.call(fn, *args, undo=undo)
        except BrokerError:
            raise
        except (aiormq.AMQPError, RuntimeError, OSError, TimeoutError) as exc:
            raise BrokerError(f"RabbitMQ: {exc!r}") from exc

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, and declare the dead-letter exchange and stream."""
        self._runner.start()
        try:
            await self._call(self._open)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._runner.stop()
            raise

    async def _open(self) -> None:
        if self._link.up:
            return
        await self._link.open()
        self._feeds.start()
        try:
            await self._topology.base()
        except BaseException:
            await self._close()
            raise

    async def close(self) -> None:
        """Close the connection: RabbitMQ requeues what was fetched and not acked.

        Shielded from cancellation (for a few seconds at most): a connection left
        half-closed would keep its deliveries from others until the server notices.
        """
        if self._runner.loop is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            try:
                await self._runner.call(self._close)
            finally:
                await self._runner.stop()

    async def _close(self) -> None:
        await self._feeds.stop()
        await self._link.close()

    async def drop_namespace(self) -> None:
        """Delete every queue, stream and exchange of this namespace, messages included.

        For tests and throwaway namespaces; not part of the broker protocol. Quorum
        queues are not free (a few file handles each on the server), so a test suite
        should not leave them behind.
        """
        await self._call(self._topology.drop)

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish ``messages`` and return once RabbitMQ has confirmed them all."""
        if messages:
            await self._call(self._publish, messages)

    async def _publish(self, messages: Sequence[Outgoing], bases: Sequence[int] = ()) -> None:
        """Publish; ``bases`` are the deliveries already made of each (copies we send back)."""
        topology = self._topology
        await topology.base()
        now = time.time()
        levels = [min(max(m.priority, 0), LEVELS - 1) for m in messages]
        pairs = dict.fromkeys(zip((m.queue for m in messages), levels, strict=True))
        for queue, level in pairs:
            await topology.level(queue, level)
        items: list[Publish] = []
        for n, m in enumerate(messages):
            target = topology.work_queue(m.queue, levels[n])
            base = bases[n] if bases else 0
            if m.eta is not None and m.eta > now:
                items.append(
                    await topology.delayed(m.queue, target, m.id, m.body, m.eta, base, now)
                )
            else:
                props = spec.Basic.Properties(delivery_mode=2, message_id=m.id)
                items.append(("", target, m.body, props))
        try:
            await self._link.publish(items)
        except BrokerError as exc:
            if isinstance(exc.__cause__, aiormq.exceptions.PublishError):
                # Unroutable: a queue was deleted behind our back. Declare again.
                self._link.forget(lambda key: isinstance(key, tuple) and key[0] in _KEEP)
            raise
        for queue, level in pairs:
            await topology.register_level(queue, level)

    async def _redelay(self, entry: Entry, eta: float) -> None:
        out = Outgoing(entry.queue, entry.id, entry.body, entry.priority, eta)
        await self._publish([out], [entry.deliveries])

    # -- consuming ------------------------------------------------------------------------

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` messages of ``queues``, waiting up to ``timeout`` for the first."""
        if limit <= 0 or not queues:
            return []
        names = list(dict.fromkeys(queues))
        return await self._call(self._fetch, names, limit, timeout, undo=self._feeds.untake)

    async def _fetch(self, names: list[str], limit: int, timeout: float) -> list[Delivery]:
        link, feeds = self._link, self._feeds
        loop_time = asyncio.get_running_loop().time
        deadline = loop_time() + timeout
        while True:
            await link.wait_up(max(deadline - loop_time(), 0.0))
            await self._topology.base()
            await self._records.control.ensure()  # revocations known before anything is taken
            gen = link.gen
            started = [await feeds.feed(name) for name in names]
            while gen == link.gen and link.up:
                version = feeds.arrived.version
                out = feeds.take(started, limit, time.time())
                if out:
                    return out
                left = deadline - loop_time()
                if left <= 0:
                    return []
                await feeds.arrived.wait(version, left)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Ack these deliveries (a stale one finishes the delivery held here now, if any)."""
        if deliveries:
            await self._call(self._feeds.holds.ack, deliveries)

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        """Requeue these deliveries, or send copies round the delay chain and ack them."""
        if not deliveries:
            return
        if delay <= 0:
            await self._call(self._feeds.holds.nack, deliveries)
            return

        async def later(entries: list[Entry]) -> None:
            eta = time.time() + delay
            await self._publish(
                [Outgoing(e.queue, e.id, e.body, e.priority, eta) for e in entries],
                [e.deliveries for e in entries],
            )

        await self._call(partial(self._feeds.holds.settle_with, by_id=False), deliveries, later)

    async def extend(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Keep these deliveries held for ``seconds`` more (a client-side lease)."""
        if deliveries:
            await self._call(self._extend, deliveries, seconds)

    async def _extend(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        self._feeds.holds.extend(deliveries, seconds)

    # -- dead letters ---------------------------------------------------------------------

    async def dead_letter(self, deliveries: Sequence[Delivery], reason: str) -> None:
        """Append copies with ``reason`` to the dead-letter stream, then ack."""
        if not deliveries:
            return

        async def bury(entries: list[Entry]) -> None:
            await self._topology.base()
            records = self._records
            await records.dead.append(
                [
                    records.dead_letter_record(
                        e.id, e.queue, e.body, reason, e.deliveries, e.priority
                    )
                    for e in entries
                ],
                exchange=self._topology.dlx,
            )

        await self._call(partial(self._feeds.holds.settle_with, by_id=True), deliveries, bury)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, newest first."""

        async def read() -> list[DeadLetter]:
            await self._records.dead.ensure()
            letters = list(self._records.letters.values())[::-1]
            return [letter for letter, _, _ in letters[:limit]]

        return await self._call(read)

    async def replay(self, ids: Sequence[str]) -> int:
        """Re-publish these dead letters unchanged and drop them; return how many."""
        wanted = list(dict.fromkeys(ids))

        async def replay() -> int:
            await self._records.dead.ensure()
            letters = self._records.letters
            found = [letters[i] for i in wanted if i in letters]
            out = [Outgoing(lt.queue, lt.id, lt.body, prio) for lt, prio, _ in found]
            if out:
                await self._publish(out)
                await self._records.forget_letters([o.id for o in out])
            return len(out)

        return await self._call(replay) if wanted else 0

    async def purge_dead_letters(self) -> int:
        """Drop every dead letter; return how many."""

        async def purge() -> int:
            await self._records.dead.ensure()
            count = len(self._records.letters)
            await self._records.forget_letters(None)
            return count

        return await self._call(purge)

    # -- revocation -----------------------------------------------------------------------

    async def revoke(self, ids: Sequence[str], ttl: float) -> None:
        """Record ``ids`` as revoked for ``ttl`` seconds in the control stream."""
        if ids:
            await self._call(self._records.revoke, list(dict.fromkeys(ids)), ttl)

    async def revoked_since(self, cursor: Any) -> tuple[list[str], Any]:
        """Ids revoked after ``cursor`` (a stream offset) and still recorded."""
        return await self._call(self._records.revoked_since, cursor)

    # -- stats, purge ---------------------------------------------------------------------

    async def stats(self) -> Mapping[str, QueueStats]:
        """Counts for the queues in the namespace's registry.

        ``in_flight`` counts the deliveries this instance holds (AMQP 0-9-1 does not
        report other consumers' unacked messages); messages prefetched by other
        instances are in nobody's ``ready``.
        """

        async def count() -> dict[str, QueueStats]:
            records, topology, counts = self._records, self._topology, self._link.counts
            await records.control.ensure()
            result = {}
            for queue in sorted(records.levels.keys() | self._feeds.feeds.keys()):
                work = await counts(topology.work_queue(queue, n) for n in range(LEVELS))
                delays = records.delays.get(queue, ())
                delayed = await counts(topology.delay_queue(queue, b) for b in delays)
                buffered, held = self._feeds.count(queue)
                ready = sum(work.values()) + buffered
                result[queue] = QueueStats(ready, sum(delayed.values()), held)
            return result

        return await self._call(count)

    async def purge(self, queue: str) -> int:
        """Delete what waits in ``queue`` (ready, delayed, prefetched here); return how many."""

        async def purge() -> int:
            records, topology = self._records, self._topology
            await records.control.ensure()
            names = [topology.work_queue(queue, level) for level in range(LEVELS)]
            names += [topology.delay_queue(queue, bit) for bit in records.delays.get(queue, ())]
            admin = await self._link.admin()
            total = 0
            for name in await self._link.counts(names):
                total += (await admin.queue_purge(name)).message_count or 0
            return total + await self._feeds.drop_buffered(queue)

        return await self._call(purge)

    # -- workers --------------------------------------------------------------------------

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Append ``info`` to the workers stream, valid for ``ttl`` seconds."""
        await self._call(self._records.heartbeat, info, ttl)

    async def workers(self) -> list[WorkerInfo]:
        """The workers whose last heartbeat has not expired."""
        return await self._call(self._records.alive)

    async def forget_worker(self, name: str) -> None:
        """Remove a worker's heartbeat."""
        await self._call(self._records.forget_worker, name)
