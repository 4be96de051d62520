"""``nats://host:port/?namespace=...``: a broker on NATS JetStream, through ``nats-py``.

How the contract maps onto JetStream (names in :class:`~celeriac.brokers._nats.Names`):

* **Work stream** ``<ns>_tasks``, one subject per queue and priority, retention
  *WorkQueue*: a message is deleted once acked, so the stream holds exactly what
  is waiting or in flight, and the server refuses overlapping consumers (a second
  consumer on a level would deliver every message twice). File storage.
* **publish**: JetStream publishes, pipelined (one round trip per batch), each
  with ``Nats-Msg-Id`` = the message id, so the server drops a copy re-sent within
  ``dedup_window`` (a publisher retrying after a lost confirm makes no duplicate).
* **fetch**: one durable pull consumer per (queue, priority), explicit acks,
  ``AckWait`` = ``visibility_timeout``. One request learns which levels hold
  messages; those are pulled (``no_wait``) highest priority first, queues in the
  order named. A waiting fetch subscribes to the queues' subjects, so a publish
  wakes it at once; leases that run out are noticed every ``poll_interval``.
* **ack** ``+ACK``, **extend** ``+WPI``, **nack** ``-NAK``, pipelined, with one
  confirmation per consumer: when the call returns, the server has done it.
  Leases, the buffer of a cancelled fetch and fencing: :mod:`celeriac.brokers._nats_pull`.
* **delays**: a message with a future eta, or nacked with a delay, goes to the
  delay stream ``<ns>_delayed``; its consumer naks it with the remaining delay
  (the server hands it back at its eta) and then moves it to the work stream (see
  :mod:`celeriac.brokers._nats_delays`). ``deliveries`` carries over in a header.
* **poison**: with ``max_deliveries=N``, a message about to be handed out for the
  (N+1)th time is dead-lettered instead. The broker counts, not ``MaxDeliver``:
  the count spans the re-publishes of delayed nacks, and a message the server
  stops delivering would otherwise sit in the stream, unseen.
* **dead letters, revocations, heartbeats**: :mod:`celeriac.brokers._nats_records`.
* **asyncio and trio**: :mod:`celeriac.brokers._nats_client`.
* **stats**: consumer info (``num_pending``, ``num_ack_pending``) per level, and
  per-subject counts of the delay stream.

URL options (and ``namespace``, ``storage``, ``replicas``, ``tls``, ``request_timeout``,
``connect_timeout``, ``reconnect_wait``, ``ping_interval``: see ``docs/brokers.md``):

- ``visibility_timeout`` (seconds, default 30): the consumers' ``AckWait``;
- ``max_deliveries`` (default 0: no limit): dead-letter a message delivered that often;
- ``dedup_window`` (seconds, default 120): the streams' duplicate window;
- ``poll_interval`` (seconds, default 0.25): how often a waiting fetch looks for
  leases that ran out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from celeriac.abc import DeadLetter, Delivery, Outgoing, QueueStats, WorkerInfo
from celeriac.brokers._hub import Hub
from celeriac.brokers._nats import (
    Names,
    NatsOptions,
    Request,
    kv_stream,
    stream_config,
    token,
    untoken,
)
from celeriac.brokers._nats_client import NatsConnection
from celeriac.brokers._nats_delays import delayed
from celeriac.brokers._nats_pull import PRIORITIES, Consumers, Level
from celeriac.brokers._nats_records import Records
from celeriac.brokers._url import BackendURL

__all__ = ["NatsBroker"]

T = TypeVar("T")


class NatsBroker:
    """A broker on NATS JetStream (see the module docstring)."""

    def __init__(self, url: str, hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        self.url = url
        self._options = NatsOptions(parsed)
        self.visibility_timeout = parsed.number("visibility_timeout", 30.0, minimum=0.01)
        self.max_deliveries = parsed.integer("max_deliveries", 0)
        self.dedup_window = parsed.number("dedup_window", 120.0, minimum=0.001)
        self.poll_interval = parsed.number("poll_interval", 0.25, minimum=0.005)
        parsed.finish()
        self._names = Names(self._options.namespace)
        self._conn = NatsConnection(self._options, "celeriac-broker")
        self._consumers: Consumers | None = None
        self._records = Records(self._conn, self._names)
        self._epoch = -1
        self._connected = False

    def __repr__(self) -> str:
        return f"<NatsBroker {self._options.display!r}>"

    @property
    def _pulls(self) -> Consumers:
        assert self._consumers is not None, "connect() first"
        return self._consumers

    async def connect(self) -> None:
        """Connect, and create the streams and buckets of the namespace if missing."""
        if not self._connected:
            await self._conn.open(self._setup)
            self._connected = True

    async def close(self) -> None:
        """Close; what this instance fetched and did not settle comes back (AckWait)."""
        self._connected = False
        consumers, self._consumers = self._consumers, None
        await self._conn.close(consumers.stop if consumers is not None else None)

    async def _setup(self) -> None:
        self._consumers = Consumers(self._conn, self._names, self.visibility_timeout)
        await self._consumers.start()
        await self._ready()

    async def _ready(self) -> None:
        """Declare the streams again after a reconnection (a server may have lost them)."""
        conn = self._conn
        if self._epoch == conn.epoch:
            return
        epoch, names, opts = conn.epoch, self._names, self._options
        ns, dedup = names.ns, int(self.dedup_window * 1e9)
        queue = {"retention": "workqueue", "duplicate_window": dedup}
        await asyncio.gather(
            conn.ensure_stream(stream_config(names.tasks, [f"{ns}.q.*.*"], opts, **queue)),
            conn.ensure_stream(stream_config(names.delayed, [f"{ns}.d.*.*"], opts, **queue)),
            conn.ensure_stream(
                stream_config(
                    names.dead, [f"{ns}.dead.*"], opts, max_msgs_per_subject=1, allow_direct=True
                )
            ),
            conn.ensure_stream(kv_stream(names.revoked, opts)),
            conn.ensure_stream(kv_stream(names.workers, opts)),
        )
        self._epoch = epoch

    async def _ready_then(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        await self._ready()
        return await fn(*args)

    # -- messages ---------------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Store ``messages`` (those with a future eta in the delay stream)."""
        if messages:
            await self._conn.run(self._publish, messages)

    async def _publish(self, messages: Sequence[Outgoing]) -> None:
        await self._ready()
        now, names = time.time(), self._names
        items: list[Request] = []
        for m in messages:
            id, priority = token(m.id), min(9, max(0, m.priority))
            if m.eta is not None and m.eta > now:
                items.append(delayed(names, m.queue, priority, m.body, id, m.eta, id))
            else:
                items.append((names.task(m.queue, priority), m.body, {"Nats-Msg-Id": id}))
        await self._conn.publish(items)

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Claim up to ``limit`` due messages, waiting up to ``timeout`` for the first."""
        if limit <= 0 or not queues:
            return []
        names = list(dict.fromkeys(queues))
        return await self._conn.run(self._fetch, names, limit, timeout, undo=self._give_back)

    def _give_back(self, deliveries: list[Delivery]) -> None:
        if self._consumers is not None:
            self._consumers.give_back(deliveries)

    async def _fetch(self, queues: list[str], limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        await self._ready()
        consumers = self._pulls
        levels = await consumers.levels(queues)
        consumers.mover.start()
        got = await self._claim(levels, limit)
        if got or timeout <= 0:
            return got
        async with consumers.watching(queues) as changed:
            while True:
                changed.clear()
                got = await self._claim(levels, limit)  # after subscribing: no publish missed
                left = deadline - time.monotonic()
                if got or left <= 0:
                    return got
                # anyio, not asyncio.wait_for: on 3.11 a cancellation that meets the
                # timeout can escape wait_for as a bare CancelledError.
                with anyio.move_on_after(min(left, self.poll_interval)):
                    await changed.wait()

    async def _claim(self, levels: list[list[Level]], limit: int) -> list[Delivery]:
        consumers, records = self._pulls, self._records
        queues = [by_priority[0].queue for by_priority in levels]
        counts, _ = await asyncio.gather(self._counts(queues), records.refresh_revoked())
        out: list[Delivery] = []
        drop: list[Delivery] = []
        poison: list[Delivery] = []
        try:
            for priority in PRIORITIES:
                for by_priority in levels:
                    level = by_priority[priority]
                    exhausted = False
                    while len(out) < limit and not exhausted:
                        need = limit - len(out)
                        got = consumers.take(level, need)
                        exhausted = True
                        if len(got) < need and counts.get(level.consumer, 0) > 0:
                            fresh = await consumers.pull(level, need - len(got))
                            exhausted = len(fresh) < need - len(got)
                            got = sorted(got + fresh, key=lambda g: g[0])
                        for _, d in got:
                            if records.is_revoked(d.id):
                                drop.append(d)
                            elif self.max_deliveries and d.deliveries > self.max_deliveries:
                                poison.append(d)
                            else:
                                out.append(d)
        except BaseException:
            consumers.give_back(out + drop + poison)
            raise
        try:
            if drop:
                await self._ack(drop)
            if poison:
                reason = f"delivered more than max_deliveries={self.max_deliveries} times"
                await self._dead_letter(poison, reason)
        except BaseException:
            consumers.give_back(out)
            raise
        consumers.handed_out(out)
        return out

    async def _counts(self, queues: list[str]) -> dict[str, int]:
        """Messages (waiting or in flight) per consumer name of ``queues``."""
        found = await asyncio.gather(
            *(
                self._conn.stream_subjects(self._names.tasks, self._names.task(q, 0)[:-1] + "*")
                for q in queues
            )
        )
        counts: dict[str, int] = {}
        for _, by_subject in found:
            for subject, count in by_subject.items():
                _, _, tok, priority = subject.split(".")
                counts[f"{tok}_{priority}"] = count
        return counts

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete these messages (even if a later delivery of them is under way)."""
        if deliveries:
            await self._conn.run(self._ack, deliveries)

    async def _ack(self, deliveries: Sequence[Delivery]) -> None:
        await self._conn.acknowledge([d.receipt for d in deliveries], b"+ACK")
        self._pulls.settled(deliveries)

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        """Return these deliveries (if still current here), due again after ``delay``."""
        if deliveries:
            await self._conn.run(self._nack, deliveries, delay)

    async def _nack(self, deliveries: Sequence[Delivery], delay: float) -> None:
        current = self._pulls.current(deliveries)
        if not current:
            return
        names = self._names
        if delay <= 0:
            await self._conn.acknowledge([d.receipt for d in current], b"-NAK")
            self._pulls.settled(current)
            client = self._conn.client
            for queue in {d.queue for d in current}:
                await client.publish(names.bell(queue), b"")
            return
        await self._ready()
        due = time.time() + delay
        items: list[Request] = []
        for d in current:
            id = token(d.id)
            msg_id = f"{id}@n{d.receipt.stream_seq}.{d.deliveries}"
            items.append(delayed(names, d.queue, d.priority, d.body, id, due, msg_id, d.deliveries))
        await self._conn.publish(items)
        await self._ack(current)

    async def extend(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Keep these deliveries (if still current here) leased for ``seconds`` more."""
        if deliveries:
            await self._conn.run(self._extend, deliveries, seconds)

    async def _extend(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        current = self._pulls.current(deliveries)
        if current:
            await self._conn.acknowledge([d.receipt for d in current], b"+WPI")
            self._pulls.keep(current, seconds)

    async def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue`` (not those in flight)."""
        return await self._conn.run(self._purge, queue)

    async def _purge(self, queue: str) -> int:
        await self._ready()
        consumers = self._pulls
        [levels] = await consumers.levels([queue])
        counts = await self._counts([queue])
        purged = 0
        for level in levels:
            waiting = [d for _, d in consumers.take(level, 1 << 30)]
            while counts.get(level.consumer, 0) > 0:
                got = await consumers.pull(level, 256)
                waiting += [d for _, d in got]
                if len(got) < 256:
                    break
            if waiting:
                await self._ack(waiting)
                purged += len(waiting)
        filter = self._names.delay(queue, 0)[:-1] + "*"
        answer = await self._conn.api(f"STREAM.PURGE.{self._names.delayed}", {"filter": filter})
        return purged + int(answer.get("purged", 0))

    async def stats(self) -> Mapping[str, QueueStats]:
        """Counts per queue that has messages or has been fetched from."""
        return await self._conn.run(self._stats)

    async def _stats(self) -> dict[str, QueueStats]:
        await self._ready()
        conn, names = self._conn, self._names
        (_, waiting), (_, delayed), infos = await asyncio.gather(
            conn.stream_subjects(names.tasks, f"{names.ns}.q.>"),
            conn.stream_subjects(names.delayed, f"{names.ns}.d.>"),
            self._consumer_infos(),
        )
        counts: dict[str, list[int]] = {}
        for subject in {*waiting, *infos}:
            row = counts.setdefault(untoken(subject.split(".")[2]), [0, 0, 0])
            info = infos.get(subject)
            if info is None:  # never fetched: everything there waits
                row[0] += waiting[subject]
            else:
                row[0] += int(info.get("num_pending", 0))
                row[2] += int(info.get("num_ack_pending", 0))
        for subject, count in delayed.items():
            counts.setdefault(untoken(subject.split(".")[2]), [0, 0, 0])[1] += count
        return {queue: QueueStats(*row) for queue, row in counts.items()}

    async def _consumer_infos(self) -> dict[str, dict[str, Any]]:
        """Consumer info of the work stream's consumers, by their subject."""
        infos: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            page = await self._conn.api(f"CONSUMER.LIST.{self._names.tasks}", {"offset": offset})
            found = page.get("consumers") or []
            for info in found:
                infos[info["config"].get("filter_subject", "")] = info
            offset += len(found)
            if not found or offset >= int(page.get("total", 0)):
                return infos

    # -- dead letters -----------------------------------------------------------------------

    async def dead_letter(self, deliveries: Sequence[Delivery], reason: str) -> None:
        """Move these deliveries to the dead-letter stream with ``reason`` (and ack them)."""
        if deliveries:
            await self._conn.run(self._dead_letter, deliveries, reason)

    async def _dead_letter(self, deliveries: Sequence[Delivery], reason: str) -> None:
        await self._ready()
        await self._records.bury(deliveries, reason)
        await self._ack(deliveries)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, newest first."""
        return await self._conn.run(self._ready_then, self._records.letters, limit)

    async def replay(self, ids: Sequence[str]) -> int:
        """Re-publish these dead letters unchanged and delete them; return how many."""
        return await self._conn.run(self._replay, ids) if ids else 0

    async def _replay(self, ids: Sequence[str]) -> int:
        await self._ready()
        found = await self._records.exhume(ids)
        if not found:
            return 0
        items: list[Request] = []
        for letter, priority, seq in found:
            id = token(letter.id)
            headers = {"Nats-Msg-Id": f"{id}@r{seq}", "Celeriac-Id": id}
            items.append((self._names.task(letter.queue, priority), letter.body, headers))
        await self._conn.publish(items)
        await self._records.forget_letters([letter.id for letter, _, _ in found])
        return len(found)

    async def purge_dead_letters(self) -> int:
        """Delete all dead letters; return how many."""
        return await self._conn.run(self._ready_then, self._records.purge_letters)

    # -- revocation and workers -------------------------------------------------------------

    async def revoke(self, ids: Sequence[str], ttl: float) -> None:
        """Record ``ids`` as revoked for ``ttl`` seconds."""
        if ids:
            await self._conn.run(self._ready_then, self._records.revoke, ids, ttl)

    async def revoked_since(self, cursor: Any) -> tuple[list[str], Any]:
        """Ids revoked after ``cursor`` (a stream sequence) and still recorded."""
        after = cursor if isinstance(cursor, int) else 0
        return await self._conn.run(self._ready_then, self._records.revoked_since, after)

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Record that a worker is alive for ``ttl`` seconds."""
        await self._conn.run(self._ready_then, self._records.heartbeat, info, ttl)

    async def workers(self) -> list[WorkerInfo]:
        """The workers whose last heartbeat has not expired."""
        return await self._conn.run(self._ready_then, self._records.workers)

    async def forget_worker(self, name: str) -> None:
        """Remove a worker's heartbeat."""
        await self._conn.run(self._ready_then, self._records.forget_worker, name)
