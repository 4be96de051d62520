"""The periodic scheduler: publishes each tick once, however many schedulers run.

Run several :class:`PeriodicScheduler` instances (``celeriac scheduler APP``, in
any number of processes and machines) for availability. They share nothing but
the app's coordinator (``docs/coordination.md``) and agree through it:

* **One clock.** What is due is decided by the store's clock
  (:meth:`~celeriac.abc.Coordinator.time`), so schedulers on machines with skewed
  clocks compute the same ticks. Each sleeps on its local clock until the next
  tick, then asks the store again.
* **One winner per tick.** For each due tick every scheduler calls
  ``claim(f"tick:{app}/{name}:{tick}", me, lease)``. Only the winner publishes,
  with a message id derived from (app, name, tick) (:func:`tick_id`). Once the
  broker has accepted the message the winner extends its claim (``keep``), sets
  the tick's *done* counter and raises the periodic's *mark* (below).
* **No tick lost to a crash.** A loser remembers the tick and looks again after
  ``lease / 2``: done, it forgets it; still claimed, it waits; free again (the
  winner died before the broker accepted the message, and its lease ran out), it
  claims and publishes it itself. The winner renews its lease while the broker
  keeps it waiting. If the winner dies after the broker accepted the message and
  before it recorded that (a few milliseconds), a peer publishes the tick again
  with the same message id, which workers run once.
* **Missed ticks.** The *mark* (a counter: the latest published tick, in µs) says
  where publishing stopped. A scheduler starts from the mark (or from now, the
  first time). Due ticks that nobody claimed and that are older than ``grace``
  seconds were missed (no scheduler could publish them in time): ``missed="skip"``
  drops them, ``"catch_up_once"`` publishes the latest of them once. Either way
  they are logged.

The arithmetic of ticks is in :mod:`celeriac.scheduler.periodic`; time enters
only through the coordinator's clock and the ``sleep`` given here, so tests run
the loop on a :class:`~celeriac.scheduler.periodic.VirtualClock`.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from celeriac.abc import Coordinator
from celeriac.coordination import open_coordinator
from celeriac.errors import BrokerError
from celeriac.scheduler.periodic import (
    EPOCH,
    Periodic,
    from_timestamp,
    tick_id,
    tick_text,
    ticks_between,
    to_micros,
)

if TYPE_CHECKING:
    from celeriac.app import App

__all__ = ["PeriodicScheduler"]

log = logging.getLogger("celeriac.scheduler")

_NAP = 30.0  # the longest sleep between two looks at the store's clock
_MARK_TRIES = 200  # attempts to take the mark's lock, 50 ms apart


class _Track:
    """One periodic as one scheduler follows it."""

    def __init__(self, periodic: Periodic, key: str) -> None:
        self.periodic = periodic
        self.key = key  # f"{app}/{name}": the coordinator keys' stem
        self.cursor: datetime | None = None  # ticks up to here are handled or handed on
        self.pending: dict[datetime, datetime] = {}  # claimed by a peer -> look again at

    def claim_key(self, tick: datetime) -> str:
        return f"tick:{self.key}:{tick_text(tick)}"


class PeriodicScheduler:
    """Publishes the app's periodic tasks (``app.periodics``) on time, each tick once.

    ``coordinator`` is where schedulers agree (default: one opened on
    ``app.coordinator_url`` for the run). Messages are published through the app
    (``app.send_task``), so start the app in the same loop (``async with app:``, or
    a worker) to publish through that loop's runtime. ``name`` identifies this
    instance in claims and logs (default: host, pid and a random suffix).
    ``lease`` is how long a claimed tick waits for its winner before a peer takes
    it over. A due tick that nobody claimed and that is more than ``grace`` seconds
    old counts as missed. A tick claimed by a peer is followed for ``12 * lease``
    seconds (its winner may be kept waiting by the broker); after that it is left
    to its winner. ``sleep`` is how the loop waits (tests pass a virtual clock's).
    """

    def __init__(
        self,
        app: App,
        coordinator: Coordinator | None = None,
        *,
        name: str | None = None,
        lease: float = 5.0,
        grace: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if not lease > 0 or not grace > 0:
            raise ValueError(f"lease and grace must be positive, not {lease!r} and {grace!r}")
        self.app = app
        self.coordinator = coordinator
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = lease
        self.grace = timedelta(seconds=grace)
        self.follow = timedelta(seconds=12 * lease)
        #: how long a published tick stays claimed and marked done: longer than any
        #: scheduler may still try it (``grace``, ``follow``), with room for a lease
        self.keep = grace + 14 * lease
        self._sleep = sleep
        self._stopping = False
        self._nap: anyio.CancelScope | None = None
        self._publishing: anyio.abc.TaskGroup | None = None
        self.published = 0  #: ticks this scheduler published
        self.missed = 0  #: stretches of missed ticks it found (each logged)

    def __repr__(self) -> str:
        return f"<PeriodicScheduler {self.name}>"

    def request_stop(self) -> None:
        """Stop: no new ticks; ticks being published get ``lease`` seconds to finish."""
        self._stopping = True
        if self._nap is not None:
            self._nap.cancel()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Publish due ticks until :meth:`request_stop` (or cancellation)."""
        async with AsyncExitStack() as stack:
            coordinator = self.coordinator
            if coordinator is None:
                coordinator = open_coordinator(self.app.coordinator_url, self.app.hub)
                await coordinator.connect()
                stack.push_async_callback(_close, coordinator)
            tracks = [_Track(p, f"{self.app.name}/{p.name}") for p in self.app.periodics.values()]
            async with anyio.create_task_group() as self._publishing:
                task_status.started()
                log.info(
                    "scheduler %s ready: %s",
                    self.name,
                    ", ".join(f"{t.periodic.name} ({t.periodic.schedule})" for t in tracks)
                    or "no periodic tasks",
                )
                await self._loop(coordinator, tracks)
                # What is being published gets a lease's time to be accepted and recorded.
                self._publishing.cancel_scope.deadline = anyio.current_time() + self.lease
        log.info(
            "scheduler %s stopped: %d tick(s) published, %d stretch(es) of missed ticks",
            self.name,
            self.published,
            self.missed,
        )

    async def _loop(self, coordinator: Coordinator, tracks: list[_Track]) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                now = from_timestamp(await coordinator.time())
                for track in tracks:
                    await self._step(coordinator, track, now)
                wake = min((self._wake(track) for track in tracks), default=None)
                delay = _NAP if wake is None else (wake - now).total_seconds()
                backoff = 0.1
            except BrokerError as exc:
                log.warning(
                    "scheduler %s: the store failed (%s); again in %.1fs", self.name, exc, backoff
                )
                delay, backoff = backoff, min(backoff * 2, 5.0)
            with anyio.CancelScope() as self._nap:
                if not self._stopping:
                    await self._sleep(min(max(delay, 0.001), _NAP))
            self._nap = None

    def _wake(self, track: _Track) -> datetime:
        assert track.cursor is not None
        return min([track.periodic.schedule.next_after(track.cursor), *track.pending.values()])

    async def _step(self, coordinator: Coordinator, track: _Track, now: datetime) -> None:
        """Handle what is due for one periodic at ``now`` (the store's clock)."""
        periodic = track.periodic
        if track.cursor is None:
            mark = await coordinator.add(f"periodic:{track.key}:last", 0, None)
            track.cursor = EPOCH + timedelta(microseconds=mark) if mark > 0 else now
        for tick, again in sorted(track.pending.items()):
            if tick < now - self.follow:  # its winner still has it (the broker keeps it waiting)
                del track.pending[tick]
            elif again <= now:
                await self._recheck(coordinator, track, tick, now)
        cutoff = now - self.grace
        if track.cursor < cutoff:
            latest = periodic.schedule.last_at_or_before(cutoff)
            if latest is not None and latest > track.cursor:
                self._report_missed(track, latest)
                if periodic.missed == "catch_up_once":
                    await self._claim(coordinator, track, latest, now)
                track.cursor = latest
        for tick in ticks_between(periodic.schedule, track.cursor, now):
            await self._claim(coordinator, track, tick, now)
            track.cursor = tick

    def _report_missed(self, track: _Track, latest: datetime) -> None:
        assert track.cursor is not None
        first = track.periodic.schedule.next_after(track.cursor)
        self.missed += 1
        log.warning(
            "periodic %s: ticks from %s to %s were missed (no scheduler published them); %s",
            track.periodic.name,
            tick_text(first),
            tick_text(latest),
            "publishing the last one once"
            if track.periodic.missed == "catch_up_once"
            else "skipped",
        )

    async def _claim(
        self, coordinator: Coordinator, track: _Track, tick: datetime, now: datetime
    ) -> None:
        owner = await coordinator.claim(track.claim_key(tick), self.name, self.lease)
        if owner == self.name:
            track.pending.pop(tick, None)
            assert self._publishing is not None
            self._publishing.start_soon(self._publish, coordinator, track, tick)
        else:
            track.pending[tick] = now + timedelta(seconds=self.lease / 2)

    async def _recheck(
        self, coordinator: Coordinator, track: _Track, tick: datetime, now: datetime
    ) -> None:
        if await coordinator.add(track.claim_key(tick), 0, self.keep) > 0:
            del track.pending[tick]  # done: its winner published it
        else:
            await self._claim(coordinator, track, tick, now)

    async def _publish(self, coordinator: Coordinator, track: _Track, tick: datetime) -> None:
        """Publish one won tick, wait for the broker, then record it (retried on errors)."""
        periodic, key = track.periodic, track.claim_key(tick)
        try:
            result = self.app.send_task(
                periodic.task,
                periodic.args,
                periodic.kwargs,
                task_id=tick_id(self.app.name, periodic.name, tick),
                headers={
                    "celeriac-periodic": periodic.name,
                    "celeriac-tick": tick_text(tick),
                    "celeriac-scheduler": self.name,
                },
            )
        except Exception:
            log.exception(
                "periodic %s: tick %s cannot be published", periodic.name, tick_text(tick)
            )
            return
        while not await result.confirmed_async(self.lease / 3):
            await self._retrying(coordinator.claim, key, self.name, self.lease)  # still mine
        await self._retrying(coordinator.claim, key, self.name, self.keep)
        await self._retrying(coordinator.add, key, 1, self.keep)
        await self._raise_mark(coordinator, track, tick)
        self.published += 1
        log.debug("scheduler %s published tick %s of %s", self.name, tick_text(tick), periodic.name)

    async def _retrying(self, call: Callable[..., Awaitable[object]], *args: object) -> None:
        """A coordinator call, retried while the store fails (for up to a lease)."""
        delay, waited = 0.05, 0.0
        while True:
            try:
                await call(*args)
                return
            except BrokerError as exc:
                if waited > self.lease:
                    log.warning("scheduler %s: giving up recording a tick: %s", self.name, exc)
                    return
                await self._sleep(delay)
                waited, delay = waited + delay, min(delay * 2, 1.0)

    async def _raise_mark(self, coordinator: Coordinator, track: _Track, tick: datetime) -> None:
        """Make the periodic's mark at least ``tick``, under a claim: read, then add."""
        lock, mark = f"periodic:{track.key}:mark", f"periodic:{track.key}:last"
        micros = to_micros(tick)
        for _ in range(_MARK_TRIES):
            try:
                if await coordinator.claim(lock, self.name, self.lease) == self.name:
                    try:
                        current = await coordinator.add(mark, 0, None)
                        if micros > current:
                            await coordinator.add(mark, micros - current, None)
                    finally:
                        with anyio.CancelScope(shield=True):
                            await coordinator.claim(lock, self.name, 0)
                    return
            except BrokerError as exc:
                log.debug("scheduler %s: raising the mark failed: %s", self.name, exc)
            await self._sleep(0.05)
        log.warning(
            "periodic %s: the mark was not raised to %s", track.periodic.name, tick_text(tick)
        )


async def _close(coordinator: Coordinator) -> None:
    with anyio.CancelScope(shield=True):
        await coordinator.close()
