"""Periodic tasks: what a user declares, and the pure arithmetic of their ticks.

A :class:`Periodic` names a task, its arguments and a schedule: :class:`Cron` (a
five-field cron expression in a time zone, read by ``croniter``) or :class:`Every`
(a fixed period). A schedule answers two questions, with no I/O and no clock of
its own, so it is tested directly (``tests/scheduler/test_ticks.py``):

* ``next_after(t)``: the first tick strictly after the instant ``t``;
* ``last_at_or_before(t)``: the last tick at or before ``t`` (``None`` if none).

:func:`ticks_between` gives the ticks in ``(a, b]``. Ticks are aware UTC datetimes,
exact to the microsecond; they are strictly increasing.

**Time zones and DST.** A cron expression is matched against the wall clock of its
zone (``tz``, default UTC), one rule for each kind of transition:

* a wall time that does not exist (spring forward: 02:30 in Paris on the last
  Sunday of March) fires once, at the end of the gap (03:00 local). Ticks that
  fall inside the gap collapse into that one tick;
* a wall time that happens twice (fall back) fires once, at its first occurrence.

So a daily job runs exactly once every calendar day, and the ticks never go back
in time. A sub-hourly cron in a zone with DST pauses while the hour repeats: use
``every=`` (or ``tz="UTC"``) for a cadence in real time.

**Every.** ``Every(period)`` ticks at whole multiples of the period since the unix
epoch (``anchor``): ``every=30`` ticks at :00 and :30 of each minute, whoever
computes it, and never drifts (integer microseconds).

:class:`VirtualClock` is time that moves only when a test says so, for the runner
and anything else that takes a ``sleep`` and a clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import heapq
import itertools
import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import anyio.lowlevel
import sniffio

from celeriac.errors import ConfigurationError

__all__ = [
    "EPOCH",
    "Cron",
    "Every",
    "Missed",
    "Periodic",
    "Schedule",
    "VirtualClock",
    "from_timestamp",
    "schedule_of",
    "tick_id",
    "tick_text",
    "ticks_between",
    "to_micros",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
# Wall-clock shifts are at most a few hours (DST: 2 h at most; a zone that moved
# across the date line: a day, but towards larger offsets). Searches backwards
# from a wall time start this far ahead of it.
_SHIFT = timedelta(hours=3)

Missed = Literal["skip", "catch_up_once"]
"""What a scheduler does with ticks missed while no scheduler ran (see ``docs/scheduling.md``)."""


def to_micros(t: datetime) -> int:
    """An aware datetime as whole microseconds since the unix epoch."""
    return (t - EPOCH) // _MICRO


def from_timestamp(seconds: float) -> datetime:
    """Unix seconds (a store's clock) as an aware UTC datetime, to the microsecond."""
    return EPOCH + timedelta(microseconds=round(seconds * 1_000_000))


def tick_text(tick: datetime) -> str:
    """A tick as text: ISO 8601 in UTC (``2025-03-30T01:00:00+00:00``), for keys and headers."""
    return tick.astimezone(UTC).isoformat()


def tick_id(app: str, periodic: str, tick: datetime) -> str:
    """The message id of one tick: the same for every scheduler that computes it.

    32 lowercase hex characters (like random ids), from a SHA-256 of the app's
    name, the periodic's name and the tick, so a tick published twice by accident
    is one message id, which workers run once (the idempotent receiver).
    """
    text = f"{app}\0{periodic}\0{tick_text(tick)}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Schedule(Protocol):
    """When a periodic task is due: pure functions of an instant."""

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after ``t`` (an aware datetime)."""
        ...

    def last_at_or_before(self, t: datetime) -> datetime | None:
        """The last tick at or before ``t``, or ``None`` when there is none."""
        ...


def ticks_between(schedule: Schedule, a: datetime, b: datetime) -> Iterator[datetime]:
    """The ticks in ``(a, b]``, in order."""
    t = schedule.next_after(a)
    while t <= b:
        yield t
        t = schedule.next_after(t)


@dataclasses.dataclass(frozen=True)
class Every:
    """A tick every ``period``, at whole multiples of it since ``anchor`` (the unix epoch).

    ``period`` is a positive :class:`~datetime.timedelta` (whole microseconds, so
    ticks never drift).
    """

    period: timedelta
    anchor: datetime = EPOCH

    def __post_init__(self) -> None:
        if not isinstance(self.period, timedelta):
            raise ConfigurationError(f"every must be a timedelta or seconds, not {self.period!r}")
        if self.period <= timedelta(0):
            raise ConfigurationError(f"every must be more than 0 seconds, not {self.period}")
        if self.anchor.tzinfo is None:
            raise ConfigurationError("the anchor of every= must be an aware datetime")

    @property
    def _step(self) -> int:
        return self.period // _MICRO

    def _at(self, k: int) -> datetime:
        return EPOCH + timedelta(microseconds=to_micros(self.anchor) + k * self._step)

    def _index(self, t: datetime) -> int:
        """The index of the last tick at or before ``t``."""
        return (to_micros(t) - to_micros(self.anchor)) // self._step

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after ``t``."""
        return self._at(self._index(t) + 1)

    def last_at_or_before(self, t: datetime) -> datetime | None:
        """The last tick at or before ``t`` (every instant has one: ticks go back forever)."""
        return self._at(self._index(t))

    def __str__(self) -> str:
        return f"every {self.period.total_seconds():g}s"


def _croniter() -> Any:
    from croniter import croniter  # type: ignore[import-untyped]

    return croniter


def _wall(t: datetime, tz: tzinfo) -> datetime:
    """The naive wall-clock time at instant ``t`` in ``tz``."""
    return t.astimezone(tz).replace(tzinfo=None, fold=0)


@dataclasses.dataclass(frozen=True)
class Cron:
    """A five-field cron expression (or ``@daily``, ``@hourly``...) in time zone ``tz``.

    Validated when made: :class:`~celeriac.errors.ConfigurationError` for a bad
    expression, an unknown zone, or an expression that never fires (``0 0 30 2 *``).
    See the module docstring for how DST transitions are handled.
    """

    expression: str
    tz: tzinfo = UTC

    def __post_init__(self) -> None:
        croniter = _croniter()
        try:
            fields = len(croniter(self.expression).expanded)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigurationError(f"bad cron expression {self.expression!r}: {exc}") from None
        if fields != 5:
            raise ConfigurationError(
                f"cron expression {self.expression!r} has {fields} fields: write the usual"
                " five (minute hour day-of-month month day-of-week)"
            )
        try:
            self.next_after(datetime.now(UTC))
        except ValueError as exc:
            raise ConfigurationError(f"cron expression {self.expression!r} never fires") from exc

    def instant(self, wall: datetime) -> datetime:
        """The UTC instant at which the naive wall time ``wall`` fires (module docstring).

        Monotonic: a later wall time never maps to an earlier instant.
        """
        first = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        if _wall(first, self.tz) == wall:
            return first  # exists (at its first occurrence, if it happens twice)
        # In a gap: fold=0 maps it past the gap, fold=1 before it; the gap ends at
        # the first instant after `before` whose offset is the later one.
        before = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
        low, high = to_micros(min(before, first)), to_micros(max(before, first))
        after = first.astimezone(self.tz).utcoffset()
        while high - low > 1:
            middle = (low + high) // 2
            if (EPOCH + timedelta(microseconds=middle)).astimezone(self.tz).utcoffset() == after:
                high = middle
            else:
                low = middle
        return EPOCH + timedelta(microseconds=high)

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after ``t``."""
        it = _croniter()(self.expression, _wall(t, self.tz))
        while True:
            tick = self.instant(it.get_next(datetime))
            if tick > t:
                return tick

    def last_at_or_before(self, t: datetime) -> datetime | None:
        """The last tick at or before ``t`` (``None`` past the start of croniter's range)."""
        start = _wall(t + _SHIFT, self.tz).replace(second=0, microsecond=0) + timedelta(minutes=1)
        it = _croniter()(self.expression, start)
        try:
            while True:
                tick = self.instant(it.get_prev(datetime))
                if tick <= t:
                    return tick
        except ValueError:  # nothing earlier that croniter can reach
            return None

    def __str__(self) -> str:
        return f"cron {self.expression!r} in {self.tz}"


def _zone(tz: str | tzinfo | None) -> tzinfo:
    if tz is None:
        return UTC
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"unknown time zone {tz!r}: {exc}") from None


def schedule_of(
    cron: str | None = None,
    every: timedelta | float | None = None,
    tz: str | tzinfo | None = None,
) -> Cron | Every:
    """The schedule for ``@app.periodic(cron=..., tz=...)`` or ``(every=...)``, validated."""
    if (cron is None) == (every is None):
        raise ConfigurationError("a periodic task needs either cron= or every= (not both)")
    if cron is not None:
        if not isinstance(cron, str):
            raise ConfigurationError(f"cron must be a string, not {cron!r}")
        return Cron(cron, _zone(tz))
    if tz is not None:
        raise ConfigurationError("tz= applies to cron= schedules; every= counts real time")
    if isinstance(every, bool) or not isinstance(every, timedelta | int | float):
        raise ConfigurationError(f"every must be a timedelta or seconds, not {every!r}")
    if isinstance(every, int | float):
        if not (math.isfinite(every) and every > 0):
            raise ConfigurationError(f"every must be more than 0 seconds, not {every!r}")
        every = timedelta(microseconds=round(every * 1_000_000))
    if every <= timedelta(0):
        raise ConfigurationError(f"every must be more than 0 seconds, not {every}")
    return Every(every)


@dataclasses.dataclass(frozen=True)
class Periodic:
    """A task published on a schedule (``app.periodics[name]``; see ``app.periodic``).

    ``name`` identifies it among the app's periodics and in the coordinator (by
    default the task's name); ``task`` is the task published at each tick with
    ``args`` and ``kwargs``; ``missed`` says what happens to ticks missed while no
    scheduler ran.
    """

    name: str
    task: str
    schedule: Cron | Every
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    missed: Missed = "skip"

    def __post_init__(self) -> None:
        if self.missed not in ("skip", "catch_up_once"):
            raise ConfigurationError(
                f"periodic {self.name!r}: missed must be 'skip' or 'catch_up_once',"
                f" not {self.missed!r}"
            )


class VirtualClock:
    """Time that moves only when told to: a clock and a ``sleep`` for tests.

    ``now()`` is the time (unix seconds; pass it as a store's ``clock=``), ``sleep``
    waits until :meth:`advance` has moved time past its deadline. ``advance``
    wakes the sleepers in deadline order, each at its own instant, and lets the
    woken tasks run until every task is blocked again before it moves on.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def now(self) -> float:
        """The current virtual time, in unix seconds."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the virtual time has moved ``seconds`` on (at least a checkpoint)."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), event))
        await event.wait()

    async def advance(self, seconds: float) -> None:
        """Move time ``seconds`` on, waking every sleeper due on the way, in order."""
        end = self._now + seconds
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= end:
            deadline, _, event = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            event.set()
            await _settle()
        self._now = end
        await _settle()


async def _settle() -> None:
    """Let every other task run until each one waits for something.

    ``anyio.wait_all_tasks_blocked`` does this, but on asyncio it polls every
    100 ms; here asyncio is polled at every turn of its loop instead (reading the
    same task attribute anyio reads).
    """
    if sniffio.current_async_library() != "asyncio":
        await anyio.wait_all_tasks_blocked()
        return
    this = asyncio.current_task()
    for _ in range(100_000):
        await asyncio.sleep(0)
        if all(task is this or _waiting(task) for task in asyncio.all_tasks()):
            return
    await anyio.wait_all_tasks_blocked()


def _waiting(task: asyncio.Task[Any]) -> bool:
    waiter = getattr(task, "_fut_waiter", None)
    return waiter is not None and not waiter.done()
