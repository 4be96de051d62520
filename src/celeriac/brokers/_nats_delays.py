"""Delayed messages of the NATS broker: the delay stream and its mover.

A message with a future eta, and one nacked with a delay, is published to the delay
stream ``<ns>_delayed`` (subject ``<ns>.d.<queue>.<priority>``, retention
WorkQueue) with its due time in the header ``Celeriac-Due`` and, after a nack, the
deliveries so far in ``Celeriac-Deliveries``: its next delivery counts on from
there. Keeping delayed messages out of the work stream keeps them out of its
consumers' way (and out of their ``num_pending``: ``stats`` counts them apart).

The stream's one durable consumer, ``mover``, is pulled by every consuming broker
with one long request at a time. A message not yet due is nak'ed with the
remaining delay, so the server itself hands it back at its eta (no polling, no
timer per message here); a due one is published to the work stream, de-duplicated
by an id derived from its delay-stream sequence (a second move after a crash is
dropped by the server), and only then acked.

Everything here runs in the client's loop (see :mod:`celeriac.brokers._nats_client`).
"""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
from nats.aio.msg import Msg

from celeriac.brokers._nats import Names, Request, nanos, receipt
from celeriac.brokers._nats_client import NatsConnection
from celeriac.errors import BrokerError

__all__ = ["Mover", "delayed"]

log = logging.getLogger("celeriac.nats")

_BATCH = 256
_EXPIRES = 5.0  # seconds a mover's pull request waits on the server


def delayed(
    names: Names,
    queue: str,
    priority: int,
    body: bytes,
    id: str,
    due: float,
    msg_id: str,
    deliveries: int = 0,
) -> Request:
    """The publish of a message (``id`` a token) due at ``due`` to the delay stream."""
    headers = {"Nats-Msg-Id": msg_id, "Celeriac-Id": id, "Celeriac-Due": repr(due)}
    if deliveries:
        headers["Celeriac-Deliveries"] = str(deliveries)
    return (names.delay(queue, priority), body, headers)


class Mover:
    """Moves due messages from the delay stream to the work stream (module docstring).

    Its pull replies arrive on the broker's shared pull subscription, which hands
    them over: messages through :meth:`deliver`, the end of a request through
    :meth:`request_over`.
    """

    def __init__(self, conn: NatsConnection, names: Names, inbox: str) -> None:
        self._conn = conn
        self._names = names
        self._inbox = inbox
        self._work_prefix = f"{names.ns}.q."
        self._delay_prefix = f"{names.ns}.d."
        self._msgs: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._open = False
        self._task: asyncio.Task[None] | None = None

    def deliver(self, msg: Msg) -> None:
        """A message of the delay stream, for the mover."""
        self._msgs.put_nowait(msg)

    def request_over(self) -> None:
        """The server ended the mover's pull request (expired, or a status)."""
        self._open = False
        self._msgs.put_nowait(None)

    def start(self) -> None:
        """Start moving (once; a consuming broker does)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop moving (a message half-moved is moved again by someone: de-duplicated)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        backoff, declared = 0.05, -1
        while True:
            try:
                if declared != self._conn.epoch:
                    declared = self._conn.epoch
                    await self._declare()
                await self._round()
                backoff = 0.05
            except (BrokerError, nats.errors.Error, OSError) as exc:
                declared = -1
                log.warning("moving due delayed messages failed (retry in %.2fs): %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _declare(self) -> None:
        stream = self._names.delayed
        config = {
            "durable_name": "mover",
            "filter_subject": f"{self._names.ns}.d.>",
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": nanos(30.0),
            "max_deliver": -1,
            "max_ack_pending": -1,  # every message waiting for its eta is pending here
            "replay_policy": "instant",
        }
        body = {"stream_name": stream, "config": config}
        await self._conn.api(f"CONSUMER.DURABLE.CREATE.{stream}.mover", body)

    async def _round(self) -> None:
        """One long pull on the mover consumer; move or hold back what it brings."""
        msgs = self._msgs
        stale = [m for m in (msgs.get_nowait() for _ in range(msgs.qsize())) if m is not None]
        if stale:  # of an earlier request
            await self._move(stale)
        self._open = True
        payload = b'{"batch":%d,"expires":%d}' % (_BATCH, nanos(_EXPIRES))
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._names.delayed}.mover"
        await self._conn.client.publish(subject, payload, reply=self._inbox)
        deadline = time.monotonic() + _EXPIRES + 0.5
        count = 0
        while self._open and count < _BATCH:
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    first = await msgs.get()
            except TimeoutError:
                return
            batch = [first] if first is not None else []
            batch += [m for m in (msgs.get_nowait() for _ in range(msgs.qsize())) if m is not None]
            if batch:
                count += len(batch)
                await self._move(batch)

    async def _move(self, batch: list[Msg]) -> None:
        now, client = time.time(), self._conn.client
        due: list[Msg] = []
        for msg in batch:
            at = float((msg.headers or {}).get("Celeriac-Due", 0.0))
            if at > now:
                await client.publish(msg.reply, b'-NAK {"delay":%d}' % nanos(at - now))
            else:
                due.append(msg)
        if not due:
            return
        items: list[Request] = []
        for msg in due:
            headers = msg.headers or {}
            id = headers.get("Celeriac-Id") or headers.get("Nats-Msg-Id", "")
            out = {"Nats-Msg-Id": f"{id}@d{receipt(msg.reply).stream_seq}", "Celeriac-Id": id}
            if "Celeriac-Deliveries" in headers:
                out["Celeriac-Deliveries"] = headers["Celeriac-Deliveries"]
            subject = self._work_prefix + msg.subject[len(self._delay_prefix) :]
            items.append((subject, msg.data, out))
        await self._conn.publish(items)
        await self._conn.acknowledge([receipt(msg.reply) for msg in due], b"+ACK")
