"""The coordination primitives' decisions, free of I/O: GCRA and argument checks.

Every backend takes the same decisions; the in-process ones (memory, SQLite) call
these functions, and the server ones (Redis's Lua, PostgreSQL's SQL) spell the same
arithmetic out for their server. The tests of this module are the specification.

**GCRA** (the generic cell rate algorithm, as in ATM networks and Redis-cell) keeps
one number per key: the *theoretical arrival time* ``tat``, when the key would be
idle again if every unit admitted so far had been spaced at the emission interval
``T = 1 / rate``. A unit asked for at ``now`` is admitted when
``max(tat, now) - (burst - 1) * T <= now``, and then ``tat`` becomes
``max(tat, now) + T``; otherwise nothing changes and the caller is told to wait
``max(tat, now) - (burst - 1) * T - now`` seconds. So an idle key admits ``burst``
units at once, then one every ``T``; over any window of ``t`` seconds at most
``burst + rate * t`` units are admitted, with no bursts at window edges (there are
no windows), and a caller that waits what it is told is admitted on its next try
(unless someone else took the unit meanwhile).

Every backend keeps GCRA's times in whole microseconds of its clock, and the
interval rounded to a whole microsecond (so a rate of 3/s is really 3.000003/s):
integer arithmetic is exact, where floats drift as units add up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "check_limit",
    "check_rate",
    "check_ttl",
    "gcra",
    "interval_us",
    "members_of",
    "micros",
]


def interval_us(rate: float) -> int:
    """GCRA's emission interval ``1 / rate`` in whole microseconds (at least 1)."""
    return max(1, round(1_000_000 / rate))


def micros(seconds: float) -> int:
    """A clock reading in whole microseconds, as GCRA keeps time."""
    return round(seconds * 1_000_000)


def gcra(
    tat: int | None, now: int, interval: int, burst: int, ahead: int = 0
) -> tuple[int, int | None]:
    """One GCRA decision, in whole microseconds: ``(wait, new_tat)``.

    ``tat`` is the key's stored theoretical arrival time (``None``: never used, or
    expired), ``now`` the store's clock and ``interval`` :func:`interval_us` of the
    rate. ``wait`` is always how long until the unit's slot (0: now). If that is
    at most ``ahead``, the unit is counted for its slot and ``new_tat`` must be
    stored (the key is idle again, so may be forgotten, once the clock passes
    it). Otherwise nothing changes and ``new_tat`` is ``None``; then ``wait`` is
    more than ``ahead``, so the two answers never look alike.

    With ``ahead=0`` this is plain GCRA: admitted now or not at all. A caller
    that reserves (``ahead`` of an interval or more) and then sleeps until its
    slot loses no capacity to its own lateness: the store's schedule moves on by
    exactly one interval per unit, however late the callers come back. Integers
    keep it exact: with floats, ``tat`` drifts by rounding as units add up and a
    due unit can be refused.
    """
    start = now if tat is None or tat < now else tat
    allow_at = start - (burst - 1) * interval
    if allow_at - now > ahead:
        return allow_at - now, None
    return max(0, allow_at - now), start + interval


def members_of(member: str | Sequence[str]) -> list[str]:
    """The members a tally call adds: one string, or a non-empty sequence of them."""
    members = [member] if isinstance(member, str) else list(member)
    if not members or not all(isinstance(m, str) for m in members):
        raise ValueError(f"a tally needs a member or a non-empty list of them, not {member!r}")
    return members


def check_ttl(ttl: float | None, *, optional: bool = False) -> None:
    """Reject a ttl that is negative, not a number, or ``None`` where one is needed."""
    if ttl is None:
        if not optional:
            raise ValueError("ttl must be a number of seconds (>= 0)")
        return
    if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl >= 0):
        raise ValueError(f"ttl must be a finite number of seconds >= 0, not {ttl!r}")


def check_limit(limit: int) -> None:
    """A semaphore's limit is a whole number of slots, 0 or more."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"limit must be an int >= 0, not {limit!r}")


def check_rate(rate: float, burst: int, ahead: float = 0.0) -> None:
    """A rate is a number per second, up to one unit a microsecond; a burst an int >= 1;
    how far ahead a slot may be reserved, a finite number of seconds >= 0."""
    if not (isinstance(rate, int | float) and 0 < rate <= 1_000_000):
        raise ValueError(f"rate must be a number > 0 and <= 1e6 (per second), not {rate!r}")
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
        raise ValueError(f"burst must be an int >= 1, not {burst!r}")
    if not (isinstance(ahead, int | float) and math.isfinite(ahead) and ahead >= 0):
        raise ValueError(f"ahead must be a finite number of seconds >= 0, not {ahead!r}")
