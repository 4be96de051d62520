"""The AMQP connection behind ``amqp://`` brokers: one aio-pika connection that comes back.

:class:`Link` owns the connection and its shared channels (publishing with
confirms, reading streams, declaring). When the connection or one of those
channels is lost, every delivery tag it handed out dies with it (RabbitMQ requeues
those messages), the *generation* changes, and a background task reconnects with
bounded exponential backoff. Consumers get channels of their own
(:meth:`Link.open_channel`, see :mod:`._amqp_feed`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from yarl import URL

from celeriac.brokers._amqp_bridge import Signal, cancelling
from celeriac.errors import BrokerError

__all__ = ["Link", "Publish"]

log = logging.getLogger("celeriac.brokers.amqp")

T = TypeVar("T")

#: (exchange, routing key, body, properties) of one message to publish
Publish = tuple[str, str, bytes, spec.Basic.Properties]

_GENERATIONS = itertools.count(1)


class Link:
    """One connection and its channels, reconnecting by itself (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        prefetch: int,
        connect_timeout: float,
        backoff: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        self._url = url
        self.prefetch = prefetch
        self.connect_timeout = connect_timeout
        self.backoff = backoff
        #: the current generation: changes with every (re)connection
        self.gen = 0
        self.up = False
        #: notified when the link goes down or comes back up
        self.changed = Signal()
        self.on_down: list[Callable[[], None]] = []
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._channels: dict[str, aiormq.Channel] = {}
        self._admin: aio_pika.abc.AbstractChannel | None = None
        self._admin_lock = asyncio.Lock()
        self._once: dict[Any, asyncio.Task[Any]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lost: asyncio.Event | None = None
        self._closing = False
        self.error: BaseException | None = None

    async def open(self) -> None:
        """Connect (raising :class:`BrokerError` if that fails) and start the supervisor."""
        self._closing = False
        self._lost = asyncio.Event()
        await self._connect()
        self._supervisor = self.spawn(self._supervise())

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task of this link's, cancelled (and awaited) by :meth:`close`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Stop reconnecting, close the connection, and end every task of the link."""
        self._closing = True
        self._supervisor = None
        conn, self._conn = self._conn, None
        self._went_down(None)
        if conn is not None and not conn.is_closed:
            await asyncio.gather(conn.close(), return_exceptions=True)
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _connect(self) -> None:
        # aio_pika.connect() without its shortcut: a connection that failed to open
        # must still be closed, or its __del__ schedules a close() that nobody awaits.
        conn = aio_pika.Connection(URL(self._url))
        try:
            await conn.connect(timeout=self.connect_timeout)
        except BaseException as exc:
            await asyncio.gather(conn.close(), return_exceptions=True)
            if isinstance(exc, TimeoutError | OSError | aiormq.AMQPError | RuntimeError):
                raise BrokerError(f"cannot connect to RabbitMQ: {exc!r}") from exc
            raise
        try:
            pub = await conn.channel(publisher_confirms=True, on_return_raises=True)
            logs = await conn.channel(publisher_confirms=False)
            await logs.set_qos(prefetch_count=1000)
            channels = {
                name: cast(aiormq.Channel, await channel.get_underlay_channel())
                for name, channel in (("pub", pub), ("log", logs))
            }
        except BaseException as exc:
            await asyncio.gather(conn.close(), return_exceptions=True)
            if isinstance(exc, TimeoutError | OSError | aiormq.AMQPError | RuntimeError):
                raise BrokerError(f"cannot open channels on RabbitMQ: {exc!r}") from exc
            raise
        lost = self._lost
        assert lost is not None
        for channel in (pub, logs):
            channel.close_callbacks.add(lambda _s, _e=None: self._channel_lost(conn))
        conn.close_callbacks.add(lambda _s, exc=None: self._connection_lost(lost, exc))
        self._conn, self._channels, self._admin = conn, channels, None
        self.gen = next(_GENERATIONS)
        self.up = True
        self.error = None
        self._once = {}
        self.changed.notify()

    def reset(self, exc: BaseException | None = None) -> None:
        """Start over with a new connection if ``exc`` (or None: always) says a channel is unusable.

        aiormq half-closes a channel whose command timed out: it refuses every later
        command, but nothing reports the channel closed.
        """
        if exc is None or isinstance(exc, aiormq.exceptions.ChannelInvalidStateError):
            conn = self._conn
            if conn is not None:
                self._channel_lost(conn)

    def _channel_lost(self, conn: aio_pika.abc.AbstractConnection) -> None:
        # A channel error (a rejected command) leaves the state of its deliveries
        # unknown: start over with a fresh connection.
        if not self._closing and not conn.is_closed:
            self.spawn(conn.close())

    def _connection_lost(self, lost: asyncio.Event, exc: BaseException | None) -> None:
        if lost is self._lost:
            self.error = exc
            lost.set()

    def _went_down(self, exc: BaseException | None) -> None:
        if not self.up:
            return
        self.up = False
        self._channels = {}
        self._admin = None
        self._once = {}  # what runs fails with its channel; the next generation starts over
        for callback in self.on_down:
            callback()
        self.changed.notify()

    async def _supervise(self) -> None:
        while True:
            assert self._lost is not None
            await self._lost.wait()
            if self._closing:
                return
            log.warning("connection to RabbitMQ lost (%r); reconnecting", self.error)
            self._went_down(self.error)
            self._lost = asyncio.Event()
            delay = self.backoff[0]
            while not self._closing:
                conn, self._conn = self._conn, None
                if conn is not None and not conn.is_closed:
                    await asyncio.gather(conn.close(), return_exceptions=True)
                try:
                    await self._connect()
                    log.info("reconnected to RabbitMQ")
                    break
                except Exception as exc:  # whatever it is, keep trying
                    self.error = exc
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff[1])

    # -- using the link -----------------------------------------------------------------

    def channel(self, name: str) -> aiormq.Channel:
        """The live channel ``name`` (``pub`` or ``log``), or BrokerError."""
        channel = self._channels.get(name)
        if channel is None:
            raise BrokerError(f"not connected to RabbitMQ ({self.error!r})")
        if channel.is_closed:  # aiormq closes a channel on an RPC timeout, silently
            conn = self._conn
            if conn is not None:
                self._channel_lost(conn)
            raise BrokerError(f"the {name} channel to RabbitMQ closed; reconnecting")
        return channel

    async def wait_up(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the link to be up, else BrokerError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.up and not self._closing:
            left = deadline - loop.time()
            if left <= 0:
                break
            await self.changed.wait(self.changed.version, left)
        self.channel("pub")

    async def admin(self) -> aiormq.Channel:
        """A channel for declarations; one that a failed command closed is replaced."""
        async with self._admin_lock:
            if self._admin is None or self._admin.is_closed:
                conn = self._conn
                if conn is None or not self.up:
                    raise BrokerError(f"not connected to RabbitMQ ({self.error!r})")
                self._admin = await conn.channel(publisher_confirms=False)
            return cast(aiormq.Channel, await self._admin.get_underlay_channel())

    async def open_channel(
        self, prefetch: int, on_close: Callable[[], None]
    ) -> tuple[aiormq.Channel, Callable[[], Coroutine[Any, Any, None]]]:
        """A new channel with ``basic.qos(prefetch)``, for one consumer.

        ``on_close`` is called when the channel closes (not when we close it, nor
        with the connection: that is :attr:`on_down`). Returns the channel and an
        async function that closes it.
        """
        conn = self._conn
        if conn is None or not self.up:
            raise BrokerError(f"not connected to RabbitMQ ({self.error!r})")
        channel = await conn.channel(publisher_confirms=False)
        closing = False

        def closed(_sender: object, _exc: BaseException | None = None) -> None:
            if not closing and not self._closing:
                on_close()

        async def close() -> None:
            nonlocal closing
            closing = True
            if not channel.is_closed:
                await asyncio.gather(channel.close(), return_exceptions=True)

        channel.close_callbacks.add(closed)
        try:
            await channel.set_qos(prefetch_count=prefetch)
        except BaseException:
            await close()
            raise
        return cast(aiormq.Channel, await channel.get_underlay_channel()), close

    @asynccontextmanager
    async def scratch(self) -> AsyncIterator[aiormq.Channel]:
        """A throwaway channel, for commands that may fail (and close their channel)."""
        conn = self._conn
        if conn is None or not self.up:
            raise BrokerError(f"not connected to RabbitMQ ({self.error!r})")
        channel = await conn.channel(publisher_confirms=False)
        try:
            yield cast(aiormq.Channel, await channel.get_underlay_channel())
        finally:
            if not channel.is_closed:
                await asyncio.gather(channel.close(), return_exceptions=True)

    async def counts(self, names: Iterable[str]) -> dict[str, int]:
        """Ready-message counts of those of ``names`` that exist (passive declares)."""
        result: dict[str, int] = {}
        pending = list(names)
        while pending:
            async with self.scratch() as channel:
                while pending:
                    name = pending.pop(0)
                    try:
                        ok = await channel.queue_declare(name, passive=True)
                    except aiormq.exceptions.ChannelNotFoundEntity:
                        break  # that closed the channel: go on with a new one
                    result[name] = ok.message_count or 0
        return result

    async def wait_for_stream(self, name: str, timeout: float = 10.0) -> None:
        """Wait until the stream ``name`` has a running member here.

        RabbitMQ 3.10 crashes the channel (and with it the connection) that publishes
        to a stream whose leader has not started yet (rabbitmq-server#12969, fixed in
        4.0.x).
        A consumer can only attach once it has, and a failed attach only closes its
        own channel: so attach (on a scratch channel) until that works.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                async with self.scratch() as channel:
                    await channel.basic_qos(prefetch_count=1)
                    tag = f"celeriac.{uuid.uuid4().hex}"
                    await channel.basic_consume(
                        name, _ignore, arguments={"x-stream-offset": "next"}, consumer_tag=tag
                    )
                    return
            except aiormq.AMQPError:
                if loop.time() > deadline:
                    raise
            await asyncio.sleep(0.05)

    async def once(self, key: Any, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` once per generation for ``key``; concurrent callers share it.

        The work is shielded: a cancelled caller does not cancel it for the others.
        A failure is forgotten, so the next caller tries again.
        """
        task = self._once.get(key)
        if task is not None and task.done() and not task.cancelled() and not task.exception():
            return cast(T, task.result())  # the common case: done before
        if task is None:
            self.channel("pub")
            task = self._once[key] = self.spawn(_run(make))
            task.add_done_callback(lambda t: self._forget_failed(key, t))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if cancelling():
                raise
            raise BrokerError(f"lost the connection to RabbitMQ ({self.error!r})") from None
        except (aiormq.AMQPError, RuntimeError, OSError) as exc:
            self.reset(exc)
            raise BrokerError(f"RabbitMQ refused: {exc!r}") from exc

    def forget(self, keep: Callable[[Any], bool]) -> None:
        """Forget the :meth:`once` results whose key ``keep`` rejects (run them again)."""
        self._once = {key: task for key, task in self._once.items() if keep(key)}

    def _forget_failed(self, key: Any, task: asyncio.Task[Any]) -> None:
        failed = task.cancelled() or task.exception() is not None
        if failed and self._once.get(key) is task:
            del self._once[key]

    async def publish(self, messages: Sequence[Publish]) -> None:
        """Publish ``messages`` (mandatory, persistent) and wait for every confirm."""
        if not messages:
            return
        channel = self.channel("pub")
        results = await asyncio.gather(
            *(
                channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=key,
                    properties=props,
                    mandatory=True,
                    wait=False,
                )
                for exchange, key, body, props in messages
            ),
            return_exceptions=True,
        )
        for result in results:
            # A CancelledError here is a confirm lost with its channel: our own
            # cancellation would have been raised by gather itself.
            if isinstance(result, BaseException):
                self.reset(result)
                raise BrokerError(f"RabbitMQ did not accept a message: {result!r}") from result


async def _run(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


async def _ignore(message: DeliveredMessage) -> None:
    pass
