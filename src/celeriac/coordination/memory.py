"""``memory://[name]``: coordination state in this process, for ``celeriac dev`` and tests.

The state lives in the App's :class:`~celeriac.brokers.Hub`, shared by every
coordinator the App opens on the same name, from any thread and any event loop
(one lock; each call is one step under it). Two Apps never share it.

The clock is the process's: unix time taken once when the store is made, then
advanced by :func:`time.monotonic`, so a wall-clock step (NTP) never shortens a
lease. Tests of time-based logic pass ``clock=`` (any ``() -> float`` in seconds)
to drive it by hand, without sleeping. Expired entries are invisible at once and
dropped by a sweep at most every 10 s of that clock. URL options: none (a
broker's ``visibility_timeout`` is accepted and ignored, so one URL serves both).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio.lowlevel

from celeriac.brokers._hub import Hub
from celeriac.brokers._url import BackendURL
from celeriac.coordination._rules import (
    check_limit,
    check_rate,
    check_ttl,
    gcra,
    interval_us,
    members_of,
    micros,
)
from celeriac.errors import BrokerError

__all__ = ["MemoryCoordinator"]

T = TypeVar("T")

_NEVER = float("inf")
_SWEEP_EVERY = 10.0


def _steady_clock() -> Callable[[], float]:
    """Unix time now, advancing with the monotonic clock from here on."""
    offset = time.time() - time.monotonic()
    return lambda: time.monotonic() + offset


class _State:
    """Everything one named store holds; touched only under :attr:`lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clock = _steady_clock()
        self.counters: dict[str, tuple[int, float]] = {}  # key -> (value, expires at)
        self.tallies: dict[str, tuple[set[str], float]] = {}  # key -> (members, expires at)
        self.claims: dict[str, tuple[str, float]] = {}  # key -> (owner, expires at)
        self.slots: dict[str, dict[str, float]] = {}  # key -> holder -> lease end
        self.throttles: dict[str, int] = {}  # key -> tat in µs (idle once passed)
        self.next_sweep = 0.0

    def sweep(self, now: float) -> None:
        """Forget what has expired (at most every :data:`_SWEEP_EVERY` seconds)."""
        if now < self.next_sweep:
            return
        self.next_sweep = now + _SWEEP_EVERY
        for table in (self.counters, self.tallies, self.claims):
            for key in [k for k, entry in table.items() if entry[1] <= now]:
                del table[key]
        for key, leases in list(self.slots.items()):
            for holder in [h for h, end in leases.items() if end <= now]:
                del leases[holder]
            if not leases:
                del self.slots[key]
        now_us = micros(now)
        for key in [k for k, tat in self.throttles.items() if tat <= now_us]:
            del self.throttles[key]


def _until(now: float, ttl: float | None) -> float:
    return _NEVER if ttl is None else now + ttl


class MemoryCoordinator:
    """A coordinator whose state lives in this process (see the module docstring)."""

    def __init__(
        self,
        url: str = "memory://",
        hub: Hub | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        parsed = BackendURL(url)
        parsed.ignore("visibility_timeout")  # the same URL often names the broker too
        parsed.finish()
        self.url = url
        #: the store's name: ``memory://NAME``, ``"default"`` when left out
        self.name = parsed.netloc or "default"
        self._state = (hub or Hub()).get("memory-coordinator", self.name, _State)
        self._clock = clock or self._state.clock
        self._closed = False

    def __repr__(self) -> str:
        return f"<MemoryCoordinator {self.url!r}>"

    async def _step(self, fn: Callable[[_State, float], T]) -> T:
        await anyio.lowlevel.checkpoint()
        if self._closed:
            raise BrokerError(f"{self.url}: the coordinator is closed")
        state = self._state
        with state.lock:
            now = self._clock()
            state.sweep(now)
            return fn(state, now)

    async def connect(self) -> None:
        """Nothing to open; allowed again after :meth:`close`."""
        self._closed = False

    async def close(self) -> None:
        """Stop this instance (the state stays in the hub)."""
        self._closed = True

    async def time(self) -> float:
        """This store's clock (see the module docstring)."""
        return await self._step(lambda state, now: now)

    async def add(self, key: str, delta: int, ttl: float | None) -> int:
        """Add ``delta`` to the counter ``key`` (absent: 0) and return the new value."""
        check_ttl(ttl, optional=True)

        def add(state: _State, now: float) -> int:
            value, until = state.counters.get(key, (0, _NEVER))
            value = (value if until > now else 0) + delta
            state.counters[key] = (value, _until(now, ttl))
            return value

        return await self._step(add)

    async def tally(self, key: str, member: str | Sequence[str], ttl: float | None) -> int:
        """Count ``member`` (or each of several) once in the set ``key``; the number of
        distinct members."""
        check_ttl(ttl, optional=True)
        adding = members_of(member)

        def tally(state: _State, now: float) -> int:
            entry = state.tallies.get(key)
            members = entry[0] if entry is not None and entry[1] > now else set()
            members.update(adding)
            state.tallies[key] = (members, _until(now, ttl))
            return len(members)

        return await self._step(tally)

    async def claim(self, key: str, owner: str, ttl: float) -> str:
        """Hold ``key`` for ``owner`` unless another live claim exists; the holder."""
        check_ttl(ttl)

        def claim(state: _State, now: float) -> str:
            entry = state.claims.get(key)
            if entry is not None and entry[1] > now and entry[0] != owner:
                return entry[0]
            state.claims[key] = (owner, now + ttl)
            return owner

        return await self._step(claim)

    async def acquire(self, key: str, holder: str, limit: int, ttl: float) -> bool:
        """Take (or renew) one of ``limit`` leased slots of ``key`` for ``holder``."""
        check_ttl(ttl)
        check_limit(limit)

        def acquire(state: _State, now: float) -> bool:
            leases = state.slots.setdefault(key, {})
            for gone in [h for h, end in leases.items() if end <= now and h != holder]:
                del leases[gone]
            if holder not in leases or leases[holder] <= now:
                leases.pop(holder, None)
                if len(leases) >= limit:
                    if not leases:
                        del state.slots[key]
                    return False
            leases[holder] = now + ttl
            return True

        return await self._step(acquire)

    async def release(self, key: str, holder: str) -> None:
        """Give back ``holder``'s slot of ``key``, if it holds one."""

        def release(state: _State, now: float) -> None:
            leases = state.slots.get(key)
            if leases is not None:
                leases.pop(holder, None)
                if not leases:
                    del state.slots[key]

        await self._step(release)

    async def holding(self, key: str) -> int:
        """Live leases of the semaphore ``key``."""
        return await self._step(
            lambda state, now: sum(end > now for end in state.slots.get(key, {}).values())
        )

    async def throttle(self, key: str, rate: float, burst: int, ahead: float = 0.0) -> float:
        """GCRA: the wait until one unit of ``key`` may go; counted if at most ``ahead``."""
        check_rate(rate, burst, ahead)

        def throttle(state: _State, now: float) -> float:
            wait, tat = gcra(
                state.throttles.get(key), micros(now), interval_us(rate), burst, micros(ahead)
            )
            if tat is not None:
                state.throttles[key] = tat
            return wait / 1e6

        return await self._step(throttle)
