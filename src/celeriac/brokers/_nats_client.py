"""The connection of the NATS backends: one nats-py client, usable from asyncio and trio.

:class:`NatsConnection` owns one ``nats-py`` client and runs every operation
through :meth:`NatsConnection.run`:

* under asyncio, in the caller's own loop; under trio, where nats-py cannot run,
  in a private asyncio loop in a thread of the connection's own (started by
  :meth:`NatsConnection.open`, stopped by :meth:`NatsConnection.close`).
  Cancelling the trio caller cancels the operation in that loop and waits for it
  to unwind; a result it had produced all the same goes to the call's ``undo``
  (a fetch gives its deliveries back), so nothing is lost with the cancellation;
* translates client errors, error replies of the JetStream API and timeouts into
  :class:`~celeriac.errors.BrokerError` (cancellation is never wrapped).

The client reconnects by itself, forever, every ``reconnect_wait`` seconds. While
it is away, operations fail at once with BrokerError (callers retry; the
publisher keeps its backlog) instead of piling up in the client's buffer.

Requests are pipelined: :meth:`NatsConnection.requests` sends a whole batch
(publishes, acks, direct gets...) with one reply subject each, then waits once
for all the replies, so a batch costs one round trip, not one per message.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import json
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import nats
import nats.errors
import sniffio
from nats.aio.client import Client
from nats.aio.msg import Msg

from celeriac._notify import loop_waker
from celeriac.brokers._nats import JetStreamError, NatsOptions, Receipt, Request, status_of
from celeriac.errors import BrokerError

__all__ = ["NatsConnection"]

log = logging.getLogger("celeriac.nats")

T = TypeVar("T")

_STREAM_EXISTS = 10058  # JetStream err_code: "stream name already in use"
_CONNECT_PARAMETERS = frozenset(inspect.signature(Client.connect).parameters)


class _Calls:
    """The replies of one pipelined batch, by position."""

    __slots__ = ("future", "left", "replies")

    def __init__(self, count: int, future: asyncio.Future[list[Msg]]) -> None:
        self.future = future
        self.left = count
        self.replies: list[Msg | None] = [None] * count


class _LoopThread:
    """A private asyncio loop in a daemon thread: where nats-py runs under trio."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="celeriac-nats", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def call(
        self,
        fn: Callable[..., Coroutine[Any, Any, T]],
        args: tuple[Any, ...],
        undo: Callable[[T], object] | None,
    ) -> T:
        """``await fn(*args)`` in the private loop, from the caller's (trio) loop."""
        done = anyio.Event()
        wake = loop_waker(done)
        box: list[asyncio.Task[T]] = []

        def start() -> None:
            task = self.loop.create_task(fn(*args))
            box.append(task)
            task.add_done_callback(lambda _: wake())

        def cancel() -> None:
            box[0].cancel()

        # A context of its own: the caller's (trio's sniffio marker...) must not leak in.
        self.loop.call_soon_threadsafe(start, context=contextvars.Context())
        try:
            await done.wait()
        except BaseException:
            self.loop.call_soon_threadsafe(cancel)  # runs after start(): same queue
            with anyio.CancelScope(shield=True):
                await done.wait()
            task = box[0]
            if undo is not None and not task.cancelled() and task.exception() is None:
                self.loop.call_soon_threadsafe(undo, task.result(), context=contextvars.Context())
            elif not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" complaint
            raise
        task = box[0]
        if task.cancelled():  # only if the loop is shutting down under us
            raise BrokerError("the NATS connection closed during the call")
        return task.result()

    async def stop(self) -> None:
        """Stop the loop (its tasks are cancelled) and wait for the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        await anyio.to_thread.run_sync(self._thread.join)


class NatsConnection:
    """One nats-py client for one URL, usable from asyncio and trio (see the module docstring).

    Methods other than :meth:`open`, :meth:`run` and :meth:`close` run in the
    client's loop: call them only from a function given to :meth:`run`.
    """

    def __init__(self, options: NatsOptions, name: str) -> None:
        self.options = options
        self.name = name
        #: increases with every (re)connection: what was declared may be gone
        self.epoch = 0
        self._thread: _LoopThread | None = None
        self._nc: Client | None = None
        self._prefix = ""
        self._calls: dict[str, _Calls] = {}
        self._ids = itertools.count()

    # -- the caller's side ----------------------------------------------------------------

    async def open(self, setup: Callable[[], Awaitable[None]]) -> None:
        """Connect (in a private loop under trio), then run ``setup`` in the client's loop."""
        if sniffio.current_async_library() != "asyncio":
            self._thread = _LoopThread()
        try:
            await self.run(self._connect)
            await self.run(setup)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise

    async def run(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        undo: Callable[[T], object] | None = None,
    ) -> T:
        """``await fn(*args)`` in the client's loop, errors translated (module docstring)."""
        if self._thread is None:
            return await self._guard(fn, *args)
        return await self._thread.call(self._guard, (fn, *args), undo)

    async def close(self, cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run ``cleanup`` in the client's loop, close the client, stop the private loop."""

        async def shut() -> None:
            try:
                if cleanup is not None and self._nc is not None:
                    await cleanup()
            except (BrokerError, nats.errors.Error, OSError) as exc:
                log.warning("NATS %s: clean-up on close failed: %r", self.options.display, exc)
            finally:
                nc, self._nc = self._nc, None
                if nc is not None:
                    try:
                        # nats-py's close flushes and waits for the socket: bounded here, so
                        # a connection that stopped moving cannot hold a worker's shutdown.
                        async with asyncio.timeout(self.options.connect_timeout):
                            await nc.close()
                    except TimeoutError:
                        log.warning(
                            "NATS %s: the connection did not close within %ss; dropped",
                            self.options.display,
                            self.options.connect_timeout,
                        )

        with anyio.CancelScope(shield=True):  # a close must finish, even when cancelled
            try:
                if self._thread is not None or self._nc is not None:
                    await self.run(shut)
            finally:
                thread, self._thread = self._thread, None
                if thread is not None:
                    await thread.stop()

    async def _guard(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await fn(*args)
        except BrokerError:
            raise
        except (nats.errors.Error, OSError, EOFError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise BrokerError(f"{self.options.display}: {reason}") from exc

    # -- the client's loop ------------------------------------------------------------------

    async def _connect(self) -> None:
        opts = self.options
        display = opts.display

        async def on_error(exc: Exception) -> None:
            log.warning("NATS %s: %r", display, exc)

        async def on_disconnected() -> None:
            log.info("NATS %s: disconnected", display)

        async def on_reconnected() -> None:
            self.epoch += 1
            log.info("NATS %s: reconnected", display)

        settings: dict[str, Any] = {
            "servers": [opts.server],
            "name": self.name,
            "user": opts.user,
            "password": opts.password,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": opts.reconnect_wait,
            "connect_timeout": opts.connect_timeout,
            "ping_interval": opts.ping_interval,
            "max_outstanding_pings": 2,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
            "pending_size": 64 * 1024 * 1024,
        }
        if "skip_subject_validation" in _CONNECT_PARAMETERS:  # newer nats-py only
            settings["skip_subject_validation"] = True  # we build every subject ourselves
        if opts.tls:
            settings["tls"] = ssl.create_default_context()
        try:
            # nats-py retries the first connection forever too: bound it here.
            async with asyncio.timeout(opts.connect_timeout):
                nc = await nats.connect(**settings)
        except TimeoutError:
            raise BrokerError(
                f"{display}: no NATS server answered within {opts.connect_timeout}s"
            ) from None
        self._nc = nc
        self.epoch += 1
        self._prefix = nc.new_inbox()
        await nc.subscribe(self._prefix + ".>", cb=self._on_reply)

    @property
    def client(self) -> Client:
        """The connected client; BrokerError while it is (re)connecting or closed."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            state = "closed" if nc is None or nc.is_closed else "reconnecting"
            raise BrokerError(f"{self.options.display}: not connected ({state})")
        return nc

    def new_inbox(self) -> str:
        """A fresh inbox subject of this connection."""
        return self.client.new_inbox()

    async def _on_reply(self, msg: Msg) -> None:
        call, _, index = msg.subject[len(self._prefix) + 1 :].partition(".")
        calls = self._calls.get(call)
        if calls is None:
            return  # a call that gave up
        i = int(index)
        if calls.replies[i] is None:
            calls.replies[i] = msg
            calls.left -= 1
            if calls.left == 0 and not calls.future.done():
                calls.future.set_result(calls.replies)  # type: ignore[arg-type]

    async def requests(self, items: Sequence[Request], timeout: float | None = None) -> list[Msg]:
        """Send every request of ``items``, then wait once for all their replies (in order)."""
        if not items:
            return []
        nc = self.client
        call = str(next(self._ids))
        future: asyncio.Future[list[Msg]] = asyncio.get_running_loop().create_future()
        calls = self._calls[call] = _Calls(len(items), future)
        prefix = f"{self._prefix}.{call}."
        wait = (timeout or self.options.request_timeout) + len(items) / 20_000
        try:
            for i, (subject, payload, headers) in enumerate(items):
                await nc.publish(subject, payload, reply=prefix + str(i), headers=headers)
            async with asyncio.timeout(wait):
                return await future
        except TimeoutError:
            raise BrokerError(
                f"{self.options.display}: {calls.left} of {len(items)} replies missing"
                f" after {wait:.1f}s"
            ) from None
        finally:
            del self._calls[call]

    async def publish(self, items: Sequence[Request]) -> None:
        """Publish into streams and wait until the server has stored every message."""
        for reply in await self.requests(items):
            status = status_of(reply)
            if status is not None:
                raise BrokerError(f"{self.options.display}: publish failed (status {status})")
            if b'"error"' in reply.data:
                error = json.loads(reply.data).get("error", {})
                raise BrokerError(f"{self.options.display}: publish failed: {error}")

    async def acknowledge(self, receipts: Sequence[Receipt], verb: bytes) -> None:
        """Send ``verb`` (``+ACK``, ``-NAK``, ``+WPI``) for each delivery; return once done.

        Only the last message per consumer asks for a reply: a consumer handles the
        acks of one connection in the order they arrive, so its reply to the last
        means the earlier ones are done too (one reply per consumer, not per message).
        """
        last: dict[str, int] = {}
        for i, receipt in enumerate(receipts):
            last[receipt.consumer] = i
        client, tails = self.client, set(last.values())
        for i, receipt in enumerate(receipts):
            if i not in tails:
                await client.publish(receipt.subject, verb)
        await self.requests([(receipts[i].subject, verb, None) for i in sorted(tails)])

    async def api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One JetStream API call (``subject`` after ``$JS.API.``); errors raised."""
        payload = json.dumps(body).encode() if body is not None else b""
        [reply] = await self.requests([(f"$JS.API.{subject}", payload, None)])
        status = status_of(reply)
        if status is not None:
            raise BrokerError(
                f"{self.options.display}: JetStream did not answer (status {status});"
                " is the server running with -js?"
            )
        answer: dict[str, Any] = json.loads(reply.data)
        error = answer.get("error")
        if error:
            raise JetStreamError(
                f"{self.options.display}: {subject.split('.')[0].lower()} failed:"
                f" {error.get('description', error)}",
                int(error.get("code", 0)),
                int(error.get("err_code", 0)),
            )
        return answer

    async def ensure_stream(self, config: dict[str, Any]) -> None:
        """Create the stream, or bring an existing one to ``config``."""
        name = config["name"]
        try:
            await self.api(f"STREAM.CREATE.{name}", config)
        except JetStreamError as exc:
            if exc.err_code != _STREAM_EXISTS:
                raise
            await self.api(f"STREAM.UPDATE.{name}", config)

    async def stream_subjects(
        self, stream: str, subjects: str
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """A stream's state and its message count per subject matching ``subjects``."""
        counts: dict[str, int] = {}
        offset = 0
        while True:
            info = await self.api(
                f"STREAM.INFO.{stream}", {"subjects_filter": subjects, "offset": offset}
            )
            state: dict[str, Any] = info.get("state", {})
            page = state.get("subjects") or {}
            counts.update(page)
            offset += len(page)
            if not page or offset >= int(info.get("total", 0)):
                return state, counts

    async def direct_get(self, stream: str, queries: Sequence[dict[str, Any]]) -> list[Msg | None]:
        """Stored messages by direct get (pipelined); None where there is none."""
        subject = f"$JS.API.DIRECT.GET.{stream}"
        replies = await self.requests([(subject, json.dumps(q).encode(), None) for q in queries])
        found: list[Msg | None] = []
        for reply in replies:
            status = status_of(reply)
            if status == "404":
                found.append(None)
            elif status is not None:
                raise BrokerError(f"{self.options.display}: direct get failed (status {status})")
            else:
                found.append(reply)
        return found

    async def read_after(self, stream: str, after: int, chunk: int = 512) -> tuple[list[Msg], int]:
        """The messages of ``stream`` stored after sequence ``after``, and its last sequence."""
        info = await self.api(f"STREAM.INFO.{stream}")
        state = info.get("state", {})
        last = int(state.get("last_seq", 0))
        first = max(after + 1, int(state.get("first_seq", 1)))
        out: list[Msg] = []
        for start in range(first, last + 1, chunk):
            seqs = range(start, min(start + chunk, last + 1))
            got = await self.direct_get(stream, [{"seq": s} for s in seqs])
            out.extend(m for m in got if m is not None)
        return out, max(last, after)
