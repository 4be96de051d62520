"""``redis://host:6379/0``: a broker on Redis streams with one consumer group.

Each queue has one stream per priority level (0-9); a fetch reads the highest
level first, and queues named first win ties. Every operation is one Lua script
call, atomic on the server, whatever the batch size (``_redis_lua`` lists the
keys and scripts):

* **fetch** claims with ``XREADGROUP`` into the group's pending entries list,
  takes back expired leases first (``XCLAIM``, which counts the delivery), moves
  due delayed messages into their stream, drops revoked ones, and records a
  lease deadline (server time) per entry in a sorted set. A waiting fetch blocks
  in ``XREAD BLOCK`` on each queue's signal stream (renewed by publish, nack and
  delayed messages), so it wakes within a millisecond of a publish from any
  process; ``CLIENT UNBLOCK`` ends it on time at the next eta or lease deadline.
  A fetch cancelled after it claimed gives the entries back
  (``XCLAIM ... RETRYCOUNT n-1``) uncounted.
* **leases** are our own deadlines rather than the entries' idle time: a lease
  lasts the ``visibility_timeout`` of the broker that fetched, ``extend`` sets
  any length, and whoever fetches next takes over entries whose lease ran out.
  (``XAUTOCLAIM`` would reclaim by the *claimer's* idea of the timeout and cannot
  honour ``extend(seconds)``.) ``nack``/``extend`` are fenced by the entry's
  delivery count in the group, so a stale delivery cannot touch the current one.
* **ack** is ``XACK`` + ``XDEL`` (a stream holds only what is waiting or in flight),
  **nack** makes the entry due again at once, or moves it to the delayed set.
* **delayed** messages wait in a sorted set by eta and join their stream when due.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always`` an
accepted publish survives a crash of the server; with ``everysec`` up to a
second may be lost; with no persistence a restart loses everything.

URL options (also :class:`celeriac.brokers._redis.RedisOptions`):
``visibility_timeout`` (s, 30), ``prefix`` (``celeriac``), ``socket_timeout`` (s, 10),
``connect_timeout`` (s, 5), ``retry_timeout`` (s, 10), ``max_connections`` (64);
``rediss://`` adds ``ssl_cert_reqs`` and ``ssl_ca_certs``. The path is the db number.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from celeriac.abc import DeadLetter, Delivery, Outgoing, QueueStats, WorkerInfo
from celeriac.brokers import _redis_lua as lua
from celeriac.brokers._hub import Hub
from celeriac.brokers._redis import RedisConnection, RedisOptions
from celeriac.brokers._url import BackendURL
from celeriac.errors import BrokerError

__all__ = ["RedisBroker"]

_HANDED = struct.Struct(">HBIBHI")  # see _redis_lua: a message handed out
_LETTER = struct.Struct(">BIdH")  # a dead letter's head
_U8, _U16, _U32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I")
_CHUNK = 1000  # messages per script call: keeps each call to a millisecond or so
_INFO = msgspec.json.Decoder(WorkerInfo)
_TIDY_EVERY = 300.0  # seconds between two removals of idle, empty consumers
_IDLE_CONSUMER_MS = 3_600_000
#: seconds a drained fetch's signals are trusted before the next fetch claims anyway
_DRAINED_FOR = 1.0


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


def _str16(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return _U16.pack(len(raw)) + raw


def _ref(delivery: Delivery) -> bytes:
    """What a script needs to find one delivery: queue, priority, entry id, count.

    The fetch script packs it as the delivery's receipt (bytes: hashable, and
    unique per delivery, since the count goes up with every delivery).
    """
    receipt = delivery.receipt
    if not isinstance(receipt, bytes):
        raise BrokerError(f"not a delivery of a Redis broker: {delivery!r}")
    return receipt


def _ref_with_message(delivery: Delivery) -> bytes:
    return b"".join(
        (
            _ref(delivery),
            _str16(delivery.id),
            _U32.pack(len(delivery.body)),
            delivery.body,
            _U32.pack(delivery.deliveries),
        )
    )


_HEAD = struct.Struct(">BdH")


def _pack(message: Outgoing) -> bytes:
    eta = 0.0 if message.eta is None else message.eta * 1000.0
    queue, id, body = message.queue.encode(), message.id.encode(), message.body
    return b"".join(
        (
            _HEAD.pack(min(9, max(0, message.priority)), eta, len(queue)),
            queue,
            _U16.pack(len(id)),
            id,
            _U32.pack(len(body)),
            body,
        )
    )


def _handed_out(blob: bytes, queues: Sequence[str]) -> list[Delivery]:
    out: list[Delivery] = []
    unpack, size, pos, end = _HANDED.unpack_from, _HANDED.size, 0, len(blob)
    while pos < end:
        index, priority, deliveries, n_ref, n_id, n_body = unpack(blob, pos)
        pos += size
        receipt = blob[pos : pos + n_ref]
        pos += n_ref
        id = blob[pos : pos + n_id].decode(errors="replace")
        pos += n_id
        body = blob[pos : pos + n_body]
        pos += n_body
        out.append(Delivery(queues[index - 1], id, body, deliveries, receipt, priority))
    return out


def _letter(id: bytes, packed: bytes) -> DeadLetter:
    _, deliveries, at, n_queue = _LETTER.unpack_from(packed)
    pos = _LETTER.size
    queue = packed[pos : pos + n_queue].decode()
    pos += n_queue
    (n_reason,) = _U32.unpack_from(packed, pos)
    reason = packed[pos + 4 : pos + 4 + n_reason].decode(errors="replace")
    pos += 4 + n_reason
    (n_body,) = _U32.unpack_from(packed, pos)
    body = packed[pos + 4 : pos + 4 + n_body]
    return DeadLetter(id.decode(), queue, body, reason, at, deliveries)


class _Drained:
    """What a fetch that drained its queues says to wait for: signals and a due time."""

    __slots__ = ("due_at", "fresh_until", "signals")

    def __init__(self, names: Sequence[str], reply: Sequence[Any], prefix: str) -> None:
        now = time.monotonic()
        self.fresh_until = now + _DRAINED_FOR
        self.due_at = now + reply[0] / 1000 if reply[0] >= 0 else float("inf")
        self.signals = {f"{prefix}:q:{q}:signal": c for q, c in zip(names, reply[1:], strict=True)}


class RedisBroker:
    """A broker on Redis streams (see the module docstring)."""

    def __init__(self, url: str, hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        self.url = url
        self.visibility_timeout = parsed.number("visibility_timeout", 30.0)
        self.options = RedisOptions(parsed)
        parsed.finish()
        self.prefix = self.options.prefix
        self._conn = RedisConnection(url, self.options)
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._scripts: dict[str, AsyncScript] = {}
        self._fetched: set[str] = set()
        self._drained: dict[tuple[str, ...], _Drained] = {}
        self._next_tidy = 0.0

    def __repr__(self) -> str:
        return f"<RedisBroker {self.options.address} prefix={self.prefix!r}>"

    async def connect(self) -> None:
        """Open the connection pool and check that the server answers."""
        await self._conn.open()
        client = self._conn.client
        self._scripts = {name: client.register_script(getattr(lua, name)) for name in lua.__all__}

    async def close(self) -> None:
        """Close the connections; unacked deliveries return when their lease ends."""
        try:
            if self._fetched and self._scripts:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self._script("TIDY", self._consumer, _IDLE_CONSUMER_MS, *self._fetched)
        except BrokerError:
            pass  # the server is gone: nothing to tidy
        finally:
            await self._conn.close()

    async def _script(self, name: str, *args: Any) -> Any:
        return await self._conn.run(self._call, self._scripts[name], args)

    async def _call(self, client: aioredis.Redis, script: AsyncScript, args: Any) -> Any:
        return await script(args=[self.prefix, *args], client=client)

    # -- messages ---------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Add ``messages`` to their streams (or the delayed set) with one script call."""
        for part in _chunks(messages):
            await self._script("PUBLISH", b"".join(map(_pack, part)))

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Claim up to ``limit`` due messages, waiting up to ``timeout`` for the first.

        A fetch that drained its queues also learns what to wait for next (each
        queue's signal and the first due time), so the following fetch blocks at
        once instead of spending a round trip to find nothing; that knowledge is
        trusted for at most :data:`_DRAINED_FOR` seconds.
        """
        if limit <= 0 or not queues:
            return []
        names = list(dict.fromkeys(queues))
        key = tuple(names)
        self._fetched.update(names)
        limit = min(limit, _CHUNK)
        deadline = time.monotonic() + timeout
        drained = self._drained.pop(key, None)
        if drained is not None and time.monotonic() > drained.fresh_until:
            drained = None
        while True:
            if drained is None:
                reply = await self._claim(names, limit)
                if isinstance(reply, bytes):
                    return _handed_out(reply, names)
                if isinstance(reply[0], bytes):  # messages, and nothing more is due
                    self._drained[key] = _Drained(names, reply[1:], self.prefix)
                    return _handed_out(reply[0], names)
                drained = _Drained(names, reply, self.prefix)
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                self._drained[key] = drained
                return []
            if now >= self._next_tidy:
                self._next_tidy = now + _TIDY_EVERY
                await self._script("TIDY", "", _IDLE_CONSUMER_MS, *names)
            due_in = drained.due_at - now
            if due_in < 0.001:
                await anyio.sleep(max(0.0, due_in))
                drained = None
                continue
            wait = min(left, self.options.socket_timeout / 2)
            # Let the jobs just handed out start (and their results go out) before
            # this coroutine spends a write on a wait that will not end soon.
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            signalled = await self._conn.run(self._block, drained.signals, wait, due_in)
            if signalled or time.monotonic() >= drained.due_at:
                drained = None

    @staticmethod
    async def _block(
        client: aioredis.Redis, signals: dict[str, bytes], wait: float, due_in: float
    ) -> bool:
        """Wait for a signal, at most ``wait`` seconds, or until ``due_in``; signalled?"""
        block = max(1, int(wait * 1000))
        if due_in >= wait:
            return bool(await client.xread(signals, count=1, block=block))  # type: ignore[arg-type]
        # The server ends a BLOCK only on its next cron tick (1/hz: 100 ms by
        # default), so an eta or lease deadline is kept here: CLIENT UNBLOCK from
        # another connection ends the wait on time, and the connection stays.
        async with client.client() as own, anyio.create_task_group() as tg:
            me = await own.client_id()

            async def unblock() -> None:
                await anyio.sleep(due_in)
                await client.client_unblock(me)

            tg.start_soon(unblock)
            got = await own.xread(signals, count=1, block=block)  # type: ignore[arg-type]
            tg.cancel_scope.cancel()
        return bool(got)

    async def _claim(self, names: list[str], limit: int) -> Any:
        # Shielded: once the script has claimed entries, they must reach our
        # caller or be given back, never be dropped with a cancelled reply.
        with anyio.CancelScope(shield=True):
            reply = await self._script(
                "FETCH", self._consumer, int(self.visibility_timeout * 1000), limit, *names
            )
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except anyio.get_cancelled_exc_class():
            if isinstance(reply, bytes):
                claimed = _handed_out(reply, names)
                with anyio.CancelScope(shield=True):
                    await self._script("UNCLAIM", self._consumer, b"".join(map(_ref, claimed)))
            raise
        return reply

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Forget these messages (``XACK`` + ``XDEL``), whichever delivery they name."""
        for part in _chunks(deliveries):
            await self._script("ACK", b"".join(map(_ref, part)))

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        """Make these deliveries (if still current) due again after ``delay`` seconds."""
        ms = int(delay * 1000)
        for part in _chunks(deliveries):
            await self._script("NACK", ms, b"".join(map(_ref_with_message, part)))

    async def extend(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Move the lease end of these deliveries (if still current) ``seconds`` ahead."""
        ms = int(seconds * 1000)
        for part in _chunks(deliveries):
            await self._script("EXTEND", ms, b"".join(map(_ref, part)))

    async def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue`` (not those in flight)."""
        return int(await self._script("PURGE", queue))

    async def stats(self) -> Mapping[str, QueueStats]:
        """Counts per queue ever published to."""
        flat = await self._script("STATS")
        return {
            flat[i].decode(): QueueStats(int(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3]))
            for i in range(0, len(flat), 4)
        }

    # -- dead letters -----------------------------------------------------------------

    async def dead_letter(self, deliveries: Sequence[Delivery], reason: str) -> None:
        """Finish these messages and keep them, with ``reason``, as dead letters."""
        for part in _chunks(deliveries):
            await self._script("DEAD_LETTER", reason, b"".join(map(_ref_with_message, part)))

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, newest first."""
        if limit <= 0:
            return []
        flat = await self._script("DEAD_LETTERS", limit)
        return [_letter(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    async def replay(self, ids: Sequence[str]) -> int:
        """Re-publish these dead letters unchanged and delete them; return how many."""
        wanted = list(dict.fromkeys(ids))
        return sum([int(await self._script("REPLAY", *part)) for part in _chunks(wanted)])

    async def purge_dead_letters(self) -> int:
        """Delete all dead letters; return how many."""
        return int(await self._script("PURGE_DEAD"))

    # -- revocation -------------------------------------------------------------------

    async def revoke(self, ids: Sequence[str], ttl: float) -> None:
        """Record ``ids`` as revoked for ``ttl`` seconds."""
        for part in _chunks(list(dict.fromkeys(ids))):
            await self._script("REVOKE", int(ttl * 1000), *part)

    async def revoked_since(self, cursor: Any) -> tuple[list[str], Any]:
        """Ids revoked after ``cursor`` (a revocation log entry id) and still recorded."""
        after = cursor if isinstance(cursor, str) else ""
        last, ids = await self._script("REVOKED_SINCE", after)
        return [i.decode() for i in ids], last.decode()

    # -- workers ----------------------------------------------------------------------

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Record that a worker is alive for ``ttl`` seconds."""
        await self._script(
            "HEARTBEAT", info.name, max(1, int(ttl * 1000)), msgspec.json.encode(info)
        )

    async def workers(self) -> list[WorkerInfo]:
        """The workers whose last heartbeat has not expired, by name."""
        raw = await self._script("WORKERS", "")
        try:
            found = [_INFO.decode(r) for r in raw if r is not None]
        except msgspec.DecodeError as exc:
            raise BrokerError(
                f"{self.options.address}: unreadable worker heartbeat: {exc}"
            ) from exc
        return sorted(found, key=lambda w: w.name)

    async def forget_worker(self, name: str) -> None:
        """Remove a worker's heartbeat."""
        await self._script("WORKERS", name)
