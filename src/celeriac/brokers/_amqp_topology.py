"""The RabbitMQ objects of one namespace: their names, arguments and declarations.

* **Work queues.** Logical queue ``Q`` at priority ``p`` is the durable quorum queue
  ``{ns}.work.Q.{p}``, declared when first published to and registered in the
  control stream once a publish to it is confirmed (so it surely runs when
  consumers learn of it). Work queues dead-letter (at-least-once) to ``{ns}.dlx``.
* **The delay chain** (no plugin needed). A delay of ``n`` ticks of 10 ms is the
  binary expansion of ``n - 1``: the message visits the per-queue quorum queues
  ``{ns}.delay.Q.{k}`` for the bits ``k`` that are set, each with a queue TTL of
  ``2**k`` ticks (equal TTLs expire in order, so nothing waits behind a longer
  delay, unlike per-message TTLs), then ``{ns}.delay.Q.out`` (one tick), which
  dead-letters to the default exchange with the routing key, the work queue. The
  headers exchanges ``{ns}.delay.{k}`` route on the bit headers ``b{k}`` (a 0 bit
  falls through to the next exchange); every hop is an at-least-once dead-lettering.
  2**27 ticks (about 15 days) fit in one pass; a longer delay goes round again.
* **Dead letters**: the fanout exchange ``{ns}.dlx`` into the stream ``{ns}.dead``.
"""

from __future__ import annotations

import math
from typing import Any

from pamqp import commands as spec

from celeriac.brokers._amqp_link import Link, Publish
from celeriac.brokers._amqp_records import Records
from celeriac.errors import BrokerError

__all__ = ["DELAY_BITS", "LEVELS", "TICK_MS", "Topology"]

LEVELS = 10  #: priorities 0-9, one quorum queue each
TICK_MS = 10  #: the delay chain's resolution
DELAY_BITS = 27  #: 2**27 ticks in one pass of the chain
_OUT = -1  #: the "bit" of a queue's last delay queue


class Topology:
    """Names, arguments and declarations of one namespace (see the module docstring)."""

    def __init__(self, link: Link, records: Records, namespace: str, delivery_limit: int) -> None:
        self.link = link
        self.records = records
        self.namespace = namespace
        self.dlx = f"{namespace}.dlx"
        self.work_args: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dlx,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # at-least-once dead-lettering requires it
        }
        if delivery_limit:
            self.work_args["x-delivery-limit"] = delivery_limit

    def work_queue(self, queue: str, level: int) -> str:
        """The quorum queue of ``queue`` at priority ``level``."""
        name = f"{self.namespace}.work.{queue}.{level}"
        if len(name.encode()) > 255:
            raise BrokerError(f"queue name too long for RabbitMQ: {queue!r}")
        return name

    def delay_queue(self, queue: str, bit: int) -> str:
        """The delay queue of ``queue`` for ``bit`` (or ``out``)."""
        return f"{self.namespace}.delay.{queue}.{'out' if bit == _OUT else bit}"

    def delay_exchange(self, bit: int) -> str:
        """The headers exchange that routes on ``bit`` (or to the ``out`` queues)."""
        return f"{self.namespace}.delay.{'out' if bit == _OUT else bit}"

    def delay_args(self, bit: int) -> dict[str, Any]:
        """A delay queue: TTL ``2**bit`` ticks (``out``: one), then on down the chain."""
        after = "" if bit == _OUT else self.delay_exchange(bit - 1 if bit > 0 else _OUT)
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": TICK_MS << bit if bit != _OUT else TICK_MS,
            "x-dead-letter-exchange": after,  # "": the default exchange, to the work queue
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    # -- declarations (each once per connection) -------------------------------------------

    async def base(self) -> None:
        """The dead-letter exchange and stream."""

        async def declare() -> None:
            channel = await self.link.admin()
            await channel.exchange_declare(self.dlx, exchange_type="fanout", durable=True)
            await self.records.dead.declare()
            await channel.queue_bind(self.records.dead.name, self.dlx)

        await self.link.once("base", declare)

    async def level(self, queue: str, level: int) -> None:
        """Declare the work queue of ``queue`` at ``level``."""

        async def declare() -> None:
            channel = await self.link.admin()
            name = self.work_queue(queue, level)
            await channel.queue_declare(name, durable=True, arguments=self.work_args)

        await self.link.once(("level", queue, level), declare)

    async def register_level(self, queue: str, level: int) -> None:
        """Announce a level to consumers, after a publish to it was confirmed.

        RabbitMQ 3.10 may answer a declare of a quorum queue another connection is
        still creating before it runs; a consume then crashes the channel.
        """
        key = ("registered", queue, level)
        await self.link.once(key, lambda: self.records.register("l", queue, level))

    async def delayed(
        self, queue: str, target: str, id: str, body: bytes, eta: float, base: int, now: float
    ) -> Publish:
        """A message for the delay chain, its queues declared."""
        ticks = min(math.ceil((eta - now) * 1000 / TICK_MS), 1 << DELAY_BITS)
        path = ticks - 1
        for bit in [_OUT, *(b for b in range(DELAY_BITS) if path >> b & 1)]:
            await self._delay_queue(queue, bit)
        headers: dict[str, Any] = {f"b{bit}": str(path >> bit & 1) for bit in range(DELAY_BITS)}
        headers.update(cq=queue, ce=math.ceil(eta * 1000), cd=base)
        props = spec.Basic.Properties(delivery_mode=2, message_id=id, headers=headers)
        return (self.delay_exchange(DELAY_BITS - 1), target, body, props)

    async def _delay_queue(self, queue: str, bit: int) -> None:
        await self.link.once("delay-exchanges", self._delay_exchanges)

        async def declare() -> None:
            channel = await self.link.admin()
            name = self.delay_queue(queue, bit)
            await channel.queue_declare(name, durable=True, arguments=self.delay_args(bit))
            match: dict[str, Any] = {"x-match": "all", "cq": queue}
            if bit != _OUT:
                match[f"b{bit}"] = "1"
            await channel.queue_bind(name, self.delay_exchange(bit), arguments=match)
            await self.records.register("d", queue, bit)

        await self.link.once(("delay", queue, bit), declare)

    async def _delay_exchanges(self) -> None:
        channel = await self.link.admin()
        for bit in range(_OUT, DELAY_BITS):
            name = self.delay_exchange(bit)
            await channel.exchange_declare(name, exchange_type="headers", durable=True)
        for bit in range(DELAY_BITS):  # a 0 bit falls through to the next exchange
            await channel.exchange_bind(
                self.delay_exchange(bit - 1 if bit else _OUT),
                self.delay_exchange(bit),
                arguments={"x-match": "all", f"b{bit}": "0"},
            )

    async def drop(self) -> None:
        """Delete every queue, stream and exchange of the namespace (as registered)."""
        await self.records.control.ensure()
        admin = await self.link.admin()
        for queue, levels in self.records.levels.items():
            for level in levels:
                await admin.queue_delete(self.work_queue(queue, level))
        for queue, bits in self.records.delays.items():
            for bit in bits:
                await admin.queue_delete(self.delay_queue(queue, bit))
        for log in (self.records.control, self.records.workers, self.records.dead):
            await admin.queue_delete(log.name)
        for bit in range(_OUT, DELAY_BITS):
            await admin.exchange_delete(self.delay_exchange(bit))
        await admin.exchange_delete(self.dlx)
