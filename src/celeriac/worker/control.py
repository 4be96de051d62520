"""The worker's housekeeping loops: revocations, leases, heartbeats.

* **Revocations**: poll the broker for newly revoked ids; remember them (so a
  queued job never starts) and cancel any that is running here.
* **Leases**: extend the visibility lease of every delivery the worker holds,
  well before it expires, so a long task is not redelivered to another worker
  while it is still running here. If this process dies, extensions stop and
  the broker hands the messages out again.
* **Heartbeats**: tell the broker this worker is alive and what it is doing,
  for ``celeriac status``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.abc

from celeriac.abc import Broker, Delivery, WorkerInfo

__all__ = ["Control", "Revocations"]

log = logging.getLogger("celeriac.worker")


class Revocations:
    """Ids revoked recently, bounded in number."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, id: object) -> bool:
        return id in self._ids

    def add(self, ids: Iterable[str]) -> None:
        """Remember ``ids`` (the oldest are forgotten past ``size``)."""
        for id in ids:
            self._ids[id] = None
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)


class Control:
    """Runs the housekeeping loops of one worker."""

    def __init__(
        self,
        broker: Broker,
        *,
        name: str,
        queues: list[str],
        held: Callable[[], Iterable[Delivery]],
        cancel: Callable[[str], None],
        load: Callable[[], dict[str, Any]],
        revoked: Revocations,
        lease: float,
        heartbeat: float = 2.0,
        revocation_poll: float = 0.2,
        loop: str = "asyncio",
    ) -> None:
        self.broker = broker
        self.name = name
        self.queues = queues
        self.held = held
        self.cancel = cancel
        self.load = load
        self.revoked = revoked
        self.lease = lease
        self.heartbeat_every = heartbeat
        self.revocation_poll = revocation_poll
        self.loop = loop
        self.started_at = time.time()
        self._cursor: Any = None
        self._leaving = False

    def info(self) -> WorkerInfo:
        """What this worker reports about itself now."""
        load = self.load()
        return WorkerInfo(
            name=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            started_at=self.started_at,
            seen_at=time.time(),
            running=int(load.get("running", 0)),
            processed=int(load.get("processed", 0)),
            failed=int(load.get("failed", 0)),
            loop=self.loop,
            capacity=int(load.get("capacity", 0)),
        )

    async def poll_revocations(self) -> None:
        """Fetch new revocations once and cancel what runs here."""
        ids, self._cursor = await self.broker.revoked_since(self._cursor)
        if ids:
            self.revoked.add(ids)
            for id in ids:
                self.cancel(id)

    async def _revocations(self) -> None:
        while True:
            try:
                await self.poll_revocations()
            except Exception as exc:
                log.warning("could not read revocations: %r", exc)
            await anyio.sleep(self.revocation_poll)

    async def _leases(self) -> None:
        every = max(0.05, self.lease / 3)
        while True:
            await anyio.sleep(every)
            held = list(self.held())
            if held:
                try:
                    await self.broker.extend(held, self.lease)
                except Exception as exc:
                    log.warning("could not extend %d lease(s): %r", len(held), exc)

    async def _heartbeats(self) -> None:
        while not self._leaving:
            try:
                await self.broker.heartbeat(self.info(), ttl=self.heartbeat_every * 5)
            except Exception as exc:
                log.warning("heartbeat failed: %r", exc)
            await anyio.sleep(self.heartbeat_every)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Watch revocations and keep leases until cancelled (read revocations first)."""
        await self.poll_revocations()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._revocations)
            tg.start_soon(self._leases)
            task_status.started()

    async def run_heartbeats(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Report this worker alive until cancelled (the first report before ready)."""
        self._leaving = False
        await self.broker.heartbeat(self.info(), ttl=self.heartbeat_every * 5)
        task_status.started()
        await anyio.sleep(self.heartbeat_every)
        await self._heartbeats()

    async def goodbye(self) -> None:
        """Stop heartbeats and remove this worker's heartbeat (clean shutdown)."""
        self._leaving = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await self.broker.forget_worker(self.name)
            except Exception as exc:
                log.warning("could not deregister worker: %r", exc)
