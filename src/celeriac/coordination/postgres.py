"""``postgresql://``: coordination state in PostgreSQL tables, on asyncpg.

Tables of its own (``celeriac_co_*``) in the URL's ``schema``, beside the broker's
and the sink's, so the broker's URL serves as it is. Time is the server's:
every statement reads ``statement_timestamp()`` (unix seconds), so the clients'
clocks play no part.

How each operation is atomic:

* counters, claims and throttles are **one statement** each, an upsert
  (``INSERT ... ON CONFLICT DO UPDATE``) whose ``SET`` decides from the row's
  current version: PostgreSQL locks the row and, under READ COMMITTED, evaluates
  the update on its latest committed version, so concurrent calls queue on the
  row and each sees the one before;
* the semaphore (``acquire``) counts rows, which a row lock cannot protect (a
  newly inserted lease would not be in the counting statement's snapshot). It is a
  **transaction** that first takes a transaction-level advisory lock on the key
  (``pg_advisory_xact_lock`` of a 64-bit hash of schema and key), then, in a
  second statement with a fresh snapshot, sees every lease committed before it;
  ``release`` and ``holding`` are single statements;
* a tally is a transaction too: the upsert of its row locks it, then one
  statement inserts the member (``ON CONFLICT DO NOTHING``) and counts it.

A statement's time is when it started, possibly before it waited for a lock:
such a call acts as if it had come a little earlier, which only ever makes
leases and claims look alive longer and rate limits admit less.

Expired rows are invisible at once and deleted by a later call at most every
10 s per instance. URL options: ``schema``, ``pool_size``, ``connect_timeout``,
``command_timeout`` and the connection options, as for the broker (see
:mod:`celeriac.brokers.postgres`); the broker's ``visibility_timeout`` and
``poll_interval`` are accepted and ignored.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

from celeriac.brokers._hub import Hub
from celeriac.brokers._postgres_db import NOW, Database
from celeriac.brokers._url import BackendURL
from celeriac.coordination._rules import (
    check_limit,
    check_rate,
    check_ttl,
    interval_us,
    members_of,
    micros,
)

__all__ = ["PostgresCoordinator"]

_TABLES = """
CREATE TABLE IF NOT EXISTS {s}.celeriac_co_counters (
    key text PRIMARY KEY,
    value bigint NOT NULL,
    expires_at float8                   -- unix seconds, server time; NULL: never
);
CREATE TABLE IF NOT EXISTS {s}.celeriac_co_tallies (
    key text PRIMARY KEY,
    count bigint NOT NULL,
    expires_at float8
);
CREATE TABLE IF NOT EXISTS {s}.celeriac_co_members (
    key text NOT NULL,
    member text NOT NULL,
    PRIMARY KEY (key, member)
);
CREATE TABLE IF NOT EXISTS {s}.celeriac_co_claims (
    key text PRIMARY KEY,
    owner text NOT NULL,
    expires_at float8 NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.celeriac_co_slots (
    key text NOT NULL,
    holder text NOT NULL,
    expires_at float8 NOT NULL,
    PRIMARY KEY (key, holder)
);
CREATE TABLE IF NOT EXISTS {s}.celeriac_co_throttles (
    key text PRIMARY KEY,
    tat bigint NOT NULL,                -- µs, server time; idle (as good as absent) once passed
    admitted boolean NOT NULL           -- what the last call decided
)
"""

_SWEEP_EVERY = 10.0
#: the server's clock in whole microseconds, fixed for the whole statement (GCRA's unit)
_NOW_US = "(extract(epoch FROM statement_timestamp()) * 1000000)::bigint"


class PostgresCoordinator:
    """A coordinator in PostgreSQL tables (see the module docstring)."""

    def __init__(self, url: str, hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        self.url = url
        self._db = Database(parsed, "c", _no_notifications)
        parsed.ignore("visibility_timeout")  # the same URL often names the broker too
        parsed.finish()
        s = self._db.s
        self._lock_prefix = f"celeriac-co:{self._db.schema}:".encode()
        self._time = f"SELECT {NOW}"
        self._add = f"""
            INSERT INTO {s}.celeriac_co_counters AS c (key, value, expires_at)
            VALUES ($1, $2, {NOW} + $3::float8)
            ON CONFLICT (key) DO UPDATE SET
                value = CASE WHEN c.expires_at <= {NOW} THEN 0 ELSE c.value END + excluded.value,
                expires_at = excluded.expires_at
            RETURNING value"""
        # Locks the tally's row; returns the count and expiry it had (``SET key = key``
        # changes nothing), or the fresh row's.
        self._tally_lock = f"""
            INSERT INTO {s}.celeriac_co_tallies AS t (key, count, expires_at) VALUES ($1, 0, NULL)
            ON CONFLICT (key) DO UPDATE SET key = excluded.key
            RETURNING count, expires_at IS NOT NULL AND expires_at <= {NOW}"""
        self._tally_reset = f"DELETE FROM {s}.celeriac_co_members WHERE key = $1"
        self._tally_add = f"""
            WITH added AS (
                INSERT INTO {s}.celeriac_co_members (key, member)
                SELECT $1, unnest($2::text[])
                ON CONFLICT DO NOTHING RETURNING 1
            )
            UPDATE {s}.celeriac_co_tallies
            SET count = $3 + (SELECT count(*) FROM added), expires_at = {NOW} + $4::float8
            WHERE key = $1 RETURNING count"""
        winning = f"(c.expires_at <= {NOW} OR c.owner = excluded.owner)"
        self._claim = f"""
            INSERT INTO {s}.celeriac_co_claims AS c (key, owner, expires_at)
            VALUES ($1, $2, {NOW} + $3::float8)
            ON CONFLICT (key) DO UPDATE SET
                owner = CASE WHEN {winning} THEN excluded.owner ELSE c.owner END,
                expires_at = CASE WHEN {winning} THEN excluded.expires_at ELSE c.expires_at END
            RETURNING owner"""
        # Run under the key's advisory lock: every other acquire of the key has
        # committed or not started, so this statement's snapshot sees all live leases.
        self._acquire = f"""
            WITH gone AS (
                DELETE FROM {s}.celeriac_co_slots
                WHERE key = $1 AND holder <> $2 AND expires_at <= {NOW}
            ),
            live AS (
                SELECT holder FROM {s}.celeriac_co_slots WHERE key = $1 AND expires_at > {NOW}
            ),
            decision AS (
                SELECT EXISTS (SELECT 1 FROM live WHERE holder = $2)
                    OR (SELECT count(*) FROM live) < $3 AS ok
            ),
            taken AS (
                INSERT INTO {s}.celeriac_co_slots (key, holder, expires_at)
                SELECT $1, $2, {NOW} + $4::float8 FROM decision WHERE ok
                ON CONFLICT (key, holder) DO UPDATE SET expires_at = excluded.expires_at
            )
            SELECT ok FROM decision"""
        self._release = f"DELETE FROM {s}.celeriac_co_slots WHERE key = $1 AND holder = $2"
        self._holding = (
            f"SELECT count(*) FROM {s}.celeriac_co_slots WHERE key = $1 AND expires_at > {NOW}"
        )
        # GCRA (see celeriac.coordination._rules) in whole µs; $2 the emission interval,
        # $3 the burst, $4 how far ahead a slot may be reserved. A new key admits.
        start = f"greatest(t.tat, {_NOW_US})"
        admit = f"({start} - ($3::bigint - 1) * $2::bigint - $4::bigint <= {_NOW_US})"
        self._throttle = f"""
            INSERT INTO {s}.celeriac_co_throttles AS t (key, tat, admitted)
            VALUES ($1, {_NOW_US} + $2::bigint, true)
            ON CONFLICT (key) DO UPDATE SET
                tat = CASE WHEN {admit} THEN {start} + $2::bigint ELSE t.tat END,
                admitted = {admit}
            RETURNING admitted, tat, {_NOW_US}"""

        # Sweeps delete only rows they can lock at once (SKIP LOCKED): a sweep never
        # waits, so two of them (or one and an acquire dropping expired leases) cannot
        # deadlock on rows locked in opposite orders.
        def expired(table: str, cols: str, cond: str) -> str:
            return (
                f"DELETE FROM {s}.{table} WHERE ({cols}) IN (SELECT {cols} FROM {s}.{table}"
                f" WHERE {cond} FOR UPDATE SKIP LOCKED)"
            )

        self._sweep = [
            expired("celeriac_co_counters", "key", f"expires_at <= {NOW}"),
            f"""WITH gone AS ({expired("celeriac_co_tallies", "key", f"expires_at <= {NOW}")}
                    RETURNING key)
                DELETE FROM {s}.celeriac_co_members WHERE key IN (SELECT key FROM gone)""",
            expired("celeriac_co_claims", "key", f"expires_at <= {NOW}"),
            expired("celeriac_co_slots", "key, holder", f"expires_at <= {NOW}"),
            expired("celeriac_co_throttles", "key", f"tat <= {_NOW_US}"),
        ]
        self._next_sweep = 0.0

    def __repr__(self) -> str:
        return f"<PostgresCoordinator {self._db.display!r} schema={self._db.schema!r}>"

    async def connect(self) -> None:
        """Open the pool and create the schema and these tables if missing."""
        await self._db.connect()
        try:
            await self._db.run(self._setup)
        except BaseException:
            await self._db.close()
            raise

    async def _setup(self, conn: Any) -> None:
        async with conn.transaction():
            # The lock the broker's schema set-up takes: concurrent first connects queue.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"celeriac:{self._db.schema}"
            )
            await conn.execute(_TABLES.format(s=self._db.s))

    async def close(self) -> None:
        """Close the connections."""
        await self._db.close()

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        await self._maybe_sweep()
        return await self._db.run(lambda conn: conn.fetchval(sql, *args))

    async def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY

        async def sweep(conn: Any) -> None:
            for statement in self._sweep:
                await conn.execute(statement)

        await self._db.run(sweep)

    def _lock_id(self, key: str) -> int:
        digest = hashlib.blake2b(self._lock_prefix + key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    async def time(self) -> float:
        """The server's clock, in unix seconds."""
        return float(await self._db.run(lambda conn: conn.fetchval(self._time)))

    async def add(self, key: str, delta: int, ttl: float | None) -> int:
        """Add ``delta`` to the counter ``key`` (absent: 0) and return the new value."""
        check_ttl(ttl, optional=True)
        return int(await self._fetchval(self._add, key, delta, ttl))

    async def tally(self, key: str, member: str | Sequence[str], ttl: float | None) -> int:
        """Count ``member`` (or each of several) once in the set ``key``; the number of
        distinct members."""
        check_ttl(ttl, optional=True)
        adding = members_of(member)
        await self._maybe_sweep()

        async def tally(conn: Any) -> int:
            async with conn.transaction():
                count, expired = await conn.fetchrow(self._tally_lock, key)
                if expired:  # an expired set starts again, empty
                    await conn.execute(self._tally_reset, key)
                    count = 0
                return int(await conn.fetchval(self._tally_add, key, adding, count, ttl))

        return await self._db.run(tally)

    async def claim(self, key: str, owner: str, ttl: float) -> str:
        """Hold ``key`` for ``owner`` unless another live claim exists; the holder."""
        check_ttl(ttl)
        return str(await self._fetchval(self._claim, key, owner, ttl))

    async def acquire(self, key: str, holder: str, limit: int, ttl: float) -> bool:
        """Take (or renew) one of ``limit`` leased slots of ``key`` for ``holder``."""
        check_ttl(ttl)
        check_limit(limit)
        await self._maybe_sweep()
        lock = self._lock_id(key)

        async def acquire(conn: Any) -> bool:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
                return bool(await conn.fetchval(self._acquire, key, holder, limit, ttl))

        return await self._db.run(acquire)

    async def release(self, key: str, holder: str) -> None:
        """Give back ``holder``'s slot of ``key``, if it holds one."""
        await self._db.run(lambda conn: conn.execute(self._release, key, holder))

    async def holding(self, key: str) -> int:
        """Live leases of the semaphore ``key``."""
        return int(await self._db.run(lambda conn: conn.fetchval(self._holding, key)))

    async def throttle(self, key: str, rate: float, burst: int, ahead: float = 0.0) -> float:
        """GCRA: the wait until one unit of ``key`` may go; counted if at most ``ahead``."""
        check_rate(rate, burst, ahead)
        interval, early = interval_us(rate), micros(ahead)
        await self._maybe_sweep()
        admitted, tat, now = await self._db.run(
            lambda conn: conn.fetchrow(self._throttle, key, interval, burst, early)
        )
        if admitted:  # the slot it took: the one before the new tat
            return max(0.0, float(tat - interval - (burst - 1) * interval - now) / 1e6)
        return float(tat - (burst - 1) * interval - now) / 1e6


def _no_notifications(payload: str | None) -> None:
    """The coordinator sends and hears no NOTIFY (the pool's LISTEN is never opened)."""
