"""What the namespace's streams record, folded by every instance that reads them.

A :class:`StreamLog` is a stream queue (``x-queue-type: stream``) each instance
reads from its start into local state; streams are shared, append-only and read
without taking anything, so every reader sees the same history. :class:`Records`
keeps three of them:

* ``{ns}.control``: the registry (which priority levels and delay queues exist)
  and revocations (id and expiry);
* ``{ns}.dead``: dead letters (ours, with their reason, and RabbitMQ's own from the
  dead-letter exchange), and tombstones for replays and purges;
* ``{ns}.workers``: heartbeats and goodbyes.

Expiry is decided by the readers (records carry an absolute time); the streams'
``x-max-age`` only bounds their size.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from celeriac.abc import DeadLetter, WorkerInfo
from celeriac.brokers._amqp_link import Link
from celeriac.errors import BrokerError

__all__ = ["Letter", "Records", "StreamLog"]

log = logging.getLogger("celeriac.brokers.amqp")


class StreamLog:
    """A stream read from its start by every instance into local state.

    ``apply(offset, message)`` folds each message into the owner's state. Reading
    starts on first need (:meth:`ensure`) and, after a reconnection, resumes after
    the last offset seen. :meth:`ensure` returns once everything appended before
    it was called has been applied (a marker is appended and waited for).
    """

    def __init__(
        self,
        link: Link,
        name: str,
        arguments: dict[str, Any],
        apply: Callable[[int, DeliveredMessage], None],
    ) -> None:
        self.link = link
        self.name = name
        self.arguments = {"x-queue-type": "stream", **arguments}
        self.apply = apply
        #: the offset of the last message applied (-1: none yet)
        self.last_offset = -1
        self._next: int | str = "first"
        self._reading_gen = 0
        self._seen: dict[str, asyncio.Future[None]] = {}
        link.on_down.append(self._stopped)

    def _stopped(self) -> None:
        self._reading_gen = 0
        seen, self._seen = self._seen, {}
        for fut in seen.values():
            if not fut.done():
                fut.set_exception(BrokerError(f"connection lost while reading {self.name}"))

    async def declare(self) -> None:
        """Declare the stream (once per generation)."""

        async def declare() -> None:
            channel = await self.link.admin()
            await channel.queue_declare(self.name, durable=True, arguments=self.arguments)
            await self.link.wait_for_stream(self.name)

        await self.link.once(("stream", self.name), declare)

    async def ensure(self) -> None:
        """Be reading this stream, caught up with what was appended before the call."""
        await self.link.once(("read", self.name), self._start)

    async def _start(self) -> None:
        await self.declare()
        channel = self.link.channel("log")
        await channel.basic_consume(
            self.name,
            self._receive,
            arguments={"x-stream-offset": self._next},
            consumer_tag=f"celeriac.{uuid.uuid4().hex}",  # not aiormq's, from ``random``
        )
        self._reading_gen = self.link.gen
        await self.append([(b"", {"ck": "marker"})])

    async def append(
        self, records: Sequence[tuple[bytes, dict[str, Any]]], exchange: str = ""
    ) -> None:
        """Append ``(body, headers)`` records; if reading, wait until they are applied.

        ``exchange``: publish through this exchange (bound to the stream) instead.
        """
        await self.declare()
        ids = [uuid.uuid4().hex for _ in records]
        reading = self._reading_gen == self.link.gen
        loop = asyncio.get_running_loop()
        waits = [self._seen.setdefault(i, loop.create_future()) for i in ids] if reading else []
        try:
            await self.link.publish(
                [
                    (
                        exchange,
                        "" if exchange else self.name,
                        body,
                        spec.Basic.Properties(delivery_mode=2, message_id=i, headers=headers),
                    )
                    for i, (body, headers) in zip(ids, records, strict=True)
                ]
            )
            if waits:
                async with asyncio.timeout(30.0):
                    await asyncio.gather(*waits)
        except TimeoutError as exc:
            raise BrokerError(f"timed out reading back {self.name}") from exc
        finally:
            for i in ids:
                self._seen.pop(i, None)

    async def _receive(self, message: DeliveredMessage) -> None:
        headers = message.header.properties.headers or {}
        offset = headers.get("x-stream-offset")
        if isinstance(offset, int) and offset > self.last_offset:
            self.last_offset = offset
            self._next = offset + 1
            if headers.get("ck") != "marker":
                try:
                    self.apply(offset, message)
                except Exception:  # one unreadable record must not stop the log
                    log.exception("unreadable record at %s:%d", self.name, offset)
        waiter = self._seen.get(message.header.properties.message_id or "")
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        tag = message.delivery_tag
        if tag is not None and not message.channel.is_closed:
            await message.channel.basic_ack(tag, wait=False)


_JSON = msgspec.json.Encoder()
_ANY = msgspec.json.Decoder()
_INFO = msgspec.json.Decoder(WorkerInfo)

#: a dead letter, the priority to replay it with, and its offset in the stream
Letter = tuple[DeadLetter, int, int]


class Records:
    """The registry, revocations, dead letters and heartbeats of one namespace."""

    def __init__(
        self,
        link: Link,
        namespace: str,
        *,
        dead_letter_retention: int,
        delivery_limit: int,
        on_level: Callable[[str, int], None],
    ) -> None:
        self.namespace = namespace
        self.delivery_limit = delivery_limit
        self.on_level = on_level
        self.control = StreamLog(link, f"{namespace}.control", _retain(30 * 86400), self._control)
        self.workers = StreamLog(link, f"{namespace}.workers", _retain(600), self._worker)
        self.dead = StreamLog(link, f"{namespace}.dead", _retain(dead_letter_retention), self._dead)
        #: priority levels and delay queues (bits, -1: ``out``) per logical queue
        self.levels: dict[str, set[int]] = {}
        self.delays: dict[str, set[int]] = {}
        self.letters: dict[str, Letter] = {}  # oldest first
        self._revoked: dict[str, float] = {}
        self._revocations: list[tuple[int, str, float]] = []
        self._alive: dict[str, tuple[WorkerInfo, float]] = {}

    # -- the control stream: registry and revocations --------------------------------------

    async def register(self, kind: str, queue: str, number: int) -> None:
        """Record that priority level (``"l"``) or delay queue (``"d"``) ``number`` exists."""
        await self.control.append([(_JSON.encode({kind: [queue, number]}), {})])

    async def revoke(self, ids: Sequence[str], ttl: float) -> None:
        """Record ``ids`` as revoked for ``ttl`` seconds."""
        until = int((time.time() + ttl) * 1000)
        await self.control.append([(_JSON.encode({"r": [[i, until] for i in ids]}), {})])

    def is_revoked(self, id: str, now: float) -> bool:
        """Whether ``id`` is revoked (as far as this instance has read)."""
        return bool(self._revoked) and self._revoked.get(id, 0.0) > now

    async def revoked_since(self, cursor: Any) -> tuple[list[str], Any]:
        """Ids revoked after ``cursor`` (a stream offset) and still recorded."""
        await self.control.ensure()
        after = cursor if isinstance(cursor, int) else -1
        now = time.time()
        ids = [i for offset, i, until in self._revocations if offset > after and until > now]
        return ids, max(after, self.control.last_offset)

    def _control(self, offset: int, message: DeliveredMessage) -> None:
        record = _ANY.decode(message.body)
        if "l" in record:
            queue, level = record["l"]
            self.levels.setdefault(queue, set()).add(level)
            self.on_level(queue, level)
        elif "d" in record:
            queue, bit = record["d"]
            self.delays.setdefault(queue, set()).add(bit)
        elif "r" in record:
            for id, until in record["r"]:
                self._revoked[id] = until / 1000
                self._revocations.append((offset, id, until / 1000))
            if len(self._revocations) > 256 + 2 * len(self._revoked):
                now = time.time()
                self._revoked = {i: t for i, t in self._revoked.items() if t > now}
                self._revocations = [e for e in self._revocations if e[2] > now]

    # -- the dead-letter stream -------------------------------------------------------------

    def dead_letter_record(
        self, id: str, queue: str, body: bytes, reason: str, deliveries: int, priority: int
    ) -> tuple[bytes, dict[str, Any]]:
        """A dead letter as appended (through the dead-letter exchange)."""
        headers = {"ck": "dead", "cq": queue, "cr": reason, "ca": int(time.time() * 1000)}
        headers.update(cn=deliveries, cp=priority, ci=id)
        return body, headers

    async def forget_letters(self, ids: Sequence[str] | None) -> None:
        """Drop these dead letters (``None``: all of them) with a tombstone."""
        if ids is None:
            await self.dead.append([(b"", {"ck": "purge"})])
        else:
            await self.dead.append([(_JSON.encode(list(ids)), {"ck": "replay"})])

    def _dead(self, offset: int, message: DeliveredMessage) -> None:
        props = message.header.properties
        headers = props.headers or {}
        kind = headers.get("ck")
        if kind == "replay":
            for id in _ANY.decode(message.body):
                if id in self.letters and self.letters[id][2] < offset:
                    del self.letters[id]
        elif kind == "purge":
            self.letters = {k: v for k, v in self.letters.items() if v[2] > offset}
        elif kind == "dead":
            id = _text(headers["ci"])
            at, count = _int(headers["ca"]) / 1000, _int(headers["cn"])
            letter = DeadLetter(
                id, _text(headers["cq"]), message.body, _text(headers["cr"]), at, count
            )
            self.letters.pop(id, None)
            self.letters[id] = (letter, _int(headers["cp"]), offset)
        elif "x-first-death-queue" in headers:  # RabbitMQ's own: the delivery limit
            source = _text(headers["x-first-death-queue"])
            queue, _, level = source.removeprefix(f"{self.namespace}.work.").rpartition(".")
            reason = f"RabbitMQ: {_text(headers.get('x-first-death-reason'))}"
            count = self.delivery_limit + 1 + _int(headers.get("cd", 0))
            id = props.message_id or ""
            letter = DeadLetter(id, queue, message.body, reason, time.time(), count)
            self.letters.pop(id, None)
            self.letters[id] = (letter, int(level) if level.isdigit() else 0, offset)

    # -- the workers stream -----------------------------------------------------------------

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Record ``info`` as alive for ``ttl`` seconds."""
        headers = {"ck": "hb", "ce": int((time.time() + ttl) * 1000)}
        await self.workers.append([(_JSON.encode(info), headers)])

    async def forget_worker(self, name: str) -> None:
        """Remove a worker's heartbeat."""
        await self.workers.append([(name.encode(), {"ck": "forget"})])

    async def alive(self) -> list[WorkerInfo]:
        """The workers whose last heartbeat has not expired, by name."""
        await self.workers.ensure()
        now = time.time()
        return [info for _, (info, until) in sorted(self._alive.items()) if until > now]

    def _worker(self, offset: int, message: DeliveredMessage) -> None:
        headers = message.header.properties.headers or {}
        if headers.get("ck") == "hb":
            info = _INFO.decode(message.body)
            self._alive[info.name] = (info, _int(headers["ce"]) / 1000)
        elif headers.get("ck") == "forget":
            self._alive.pop(message.body.decode(), None)


def _retain(max_age: int) -> dict[str, Any]:
    # Retention drops whole segments: keep them small so it happens.
    return {"x-max-age": f"{max_age}s", "x-stream-max-segment-size-bytes": 1_000_000}


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    return str(value)
