"""``sqlite:///path.db``: coordination state in the SQLite broker's file, for one machine.

Tables of its own (``celeriac_co_*``) beside the broker's and the sink's, so the
broker's URL serves as it is. Every operation is one ``BEGIN IMMEDIATE``
transaction (the file's single write lock, queued on ``busy_timeout`` across
processes), in one thread hop, and reads the clock only once it holds the lock:
so operations of all processes are in one order, and their times in that same
order. Reads (:meth:`SqliteCoordinator.holding`) take no lock.

The clock is the machine's wall clock (``time.time()``); all processes on one
machine share it. A wall-clock step (NTP) moves every lease and ttl with it.
Expired rows are invisible at once and deleted by a later write at most every
10 s per instance.

URL options: ``busy_timeout`` and ``synchronous`` as for the SQLite broker (see
:mod:`celeriac.brokers.sqlite`); the broker's ``visibility_timeout``,
``poll_interval`` and ``idle_poll_interval`` are accepted and ignored.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from celeriac.brokers._hub import Hub
from celeriac.brokers._sqlite_db import Database, write_transaction
from celeriac.brokers._url import BackendURL
from celeriac.brokers.sqlite import open_database
from celeriac.coordination._rules import (
    check_limit,
    check_rate,
    check_ttl,
    gcra,
    interval_us,
    members_of,
    micros,
)

__all__ = ["SqliteCoordinator"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_co_counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires_at REAL                        -- NULL: never
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_co_tallies (
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_co_members (
    key TEXT NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (key, member)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_co_claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_co_slots (
    key TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, holder)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_co_throttles (
    key TEXT PRIMARY KEY,
    tat INTEGER NOT NULL                   -- µs; idle (as good as absent) once passed
) WITHOUT ROWID;
"""

_SWEEP_EVERY = 10.0
_SWEEP = (
    "DELETE FROM celeriac_co_counters WHERE expires_at <= :now",
    "DELETE FROM celeriac_co_members WHERE key IN"
    " (SELECT key FROM celeriac_co_tallies WHERE expires_at <= :now)",
    "DELETE FROM celeriac_co_tallies WHERE expires_at <= :now",
    "DELETE FROM celeriac_co_claims WHERE expires_at <= :now",
    "DELETE FROM celeriac_co_slots WHERE expires_at <= :now",
    "DELETE FROM celeriac_co_throttles WHERE tat <= :now_us",
)


def _until(now: float, ttl: float | None) -> float | None:
    return None if ttl is None else now + ttl


def _live(expires_at: float | None, now: float) -> bool:
    return expires_at is None or expires_at > now


class SqliteCoordinator:
    """A coordinator in one SQLite file (see the module docstring)."""

    def __init__(self, url: str, hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        self.url = url
        self._db: Database = open_database(parsed)
        # the same URL often names the broker too
        parsed.ignore("visibility_timeout", "poll_interval", "idle_poll_interval")
        parsed.finish()
        self._connected = False
        self._next_sweep = 0.0

    def __repr__(self) -> str:
        return f"<SqliteCoordinator {self.url!r}>"

    @property
    def path(self) -> str:
        """The absolute path of the database file."""
        return self._db.path

    async def connect(self) -> None:
        """Create the file (WAL mode), the broker's schema and these tables if missing."""
        if not self._connected:
            self._db.reopen()
            await self._db.run(self._setup)
            self._connected = True

    def _setup(self, conn: sqlite3.Connection) -> None:
        self._db.setup(conn)
        try:
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Close the connections."""
        self._connected = False
        self._db.close()

    async def _write(self, fn: Callable[[sqlite3.Connection, float], T]) -> T:
        """``fn(connection, now)`` in one IMMEDIATE transaction, ``now`` read under its lock."""

        def step(conn: sqlite3.Connection) -> T:
            with write_transaction(conn):
                now = time.time()
                if now >= self._next_sweep:
                    self._next_sweep = now + _SWEEP_EVERY
                    for statement in _SWEEP:
                        conn.execute(statement, {"now": now, "now_us": micros(now)})
                return fn(conn, now)

        return await self._db.run(step)

    async def time(self) -> float:
        """The machine's wall clock (what leases and rates are measured by here)."""
        return time.time()

    async def add(self, key: str, delta: int, ttl: float | None) -> int:
        """Add ``delta`` to the counter ``key`` (absent: 0) and return the new value."""
        check_ttl(ttl, optional=True)

        def add(conn: sqlite3.Connection, now: float) -> int:
            row = conn.execute(
                "SELECT value, expires_at FROM celeriac_co_counters WHERE key = ?", (key,)
            ).fetchone()
            value = (row[0] if row is not None and _live(row[1], now) else 0) + delta
            conn.execute(
                "INSERT OR REPLACE INTO celeriac_co_counters VALUES (?, ?, ?)",
                (key, value, _until(now, ttl)),
            )
            return value

        return await self._write(add)

    async def tally(self, key: str, member: str | Sequence[str], ttl: float | None) -> int:
        """Count ``member`` (or each of several) once in the set ``key``; the number of
        distinct members."""
        check_ttl(ttl, optional=True)
        adding = members_of(member)

        def tally(conn: sqlite3.Connection, now: float) -> int:
            row = conn.execute(
                "SELECT count, expires_at FROM celeriac_co_tallies WHERE key = ?", (key,)
            ).fetchone()
            count = 0
            if row is not None and _live(row[1], now):
                count = row[0]
            elif row is not None:  # an expired set starts again, empty
                conn.execute("DELETE FROM celeriac_co_members WHERE key = ?", (key,))
            added = conn.executemany(
                "INSERT OR IGNORE INTO celeriac_co_members VALUES (?, ?)",
                [(key, m) for m in adding],
            ).rowcount
            count += added
            conn.execute(
                "INSERT OR REPLACE INTO celeriac_co_tallies VALUES (?, ?, ?)",
                (key, count, _until(now, ttl)),
            )
            return count

        return await self._write(tally)

    async def claim(self, key: str, owner: str, ttl: float) -> str:
        """Hold ``key`` for ``owner`` unless another live claim exists; the holder."""
        check_ttl(ttl)

        def claim(conn: sqlite3.Connection, now: float) -> str:
            row = conn.execute(
                "SELECT owner, expires_at FROM celeriac_co_claims WHERE key = ?", (key,)
            ).fetchone()
            if row is not None and row[1] > now and row[0] != owner:
                return str(row[0])
            conn.execute(
                "INSERT OR REPLACE INTO celeriac_co_claims VALUES (?, ?, ?)",
                (key, owner, now + ttl),
            )
            return owner

        return await self._write(claim)

    async def acquire(self, key: str, holder: str, limit: int, ttl: float) -> bool:
        """Take (or renew) one of ``limit`` leased slots of ``key`` for ``holder``."""
        check_ttl(ttl)
        check_limit(limit)

        def acquire(conn: sqlite3.Connection, now: float) -> bool:
            conn.execute(
                "DELETE FROM celeriac_co_slots WHERE key = ? AND expires_at <= ?", (key, now)
            )
            mine = conn.execute(
                "SELECT 1 FROM celeriac_co_slots WHERE key = ? AND holder = ?", (key, holder)
            ).fetchone()
            if mine is None:
                (taken,) = conn.execute(
                    "SELECT count(*) FROM celeriac_co_slots WHERE key = ?", (key,)
                ).fetchone()
                if taken >= limit:
                    return False
            conn.execute(
                "INSERT OR REPLACE INTO celeriac_co_slots VALUES (?, ?, ?)",
                (key, holder, now + ttl),
            )
            return True

        return await self._write(acquire)

    async def release(self, key: str, holder: str) -> None:
        """Give back ``holder``'s slot of ``key``, if it holds one."""

        def release(conn: sqlite3.Connection, now: float) -> None:
            conn.execute(
                "DELETE FROM celeriac_co_slots WHERE key = ? AND holder = ?", (key, holder)
            )

        await self._write(release)

    async def holding(self, key: str) -> int:
        """Live leases of the semaphore ``key``."""

        def count(conn: sqlite3.Connection) -> int:
            (taken,) = conn.execute(
                "SELECT count(*) FROM celeriac_co_slots WHERE key = ? AND expires_at > ?",
                (key, time.time()),
            ).fetchone()
            return int(taken)

        return await self._db.run(count)

    async def throttle(self, key: str, rate: float, burst: int, ahead: float = 0.0) -> float:
        """GCRA: the wait until one unit of ``key`` may go; counted if at most ``ahead``."""
        check_rate(rate, burst, ahead)

        def throttle(conn: sqlite3.Connection, now: float) -> float:
            row = conn.execute(
                "SELECT tat FROM celeriac_co_throttles WHERE key = ?", (key,)
            ).fetchone()
            stored = None if row is None else row[0]
            wait, tat = gcra(stored, micros(now), interval_us(rate), burst, micros(ahead))
            if tat is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO celeriac_co_throttles VALUES (?, ?)", (key, tat)
                )
            return wait / 1e6

        return await self._write(throttle)
