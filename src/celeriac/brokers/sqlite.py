"""``sqlite:///path.db``: the embedded default broker, on the stdlib ``sqlite3``.

Safe for many producer and worker processes on one machine: the file is in WAL
mode, writers queue on ``busy_timeout``, and a fetch claims its messages with
one ``UPDATE ... RETURNING`` that moves ``available_at`` to the end of the lease,
so eta and lease expiry are the same column and a consumer that dies (even by
SIGKILL) simply lets its leases run out. Each method is one thread hop, whatever
the batch size. A waiting fetch polls ``PRAGMA data_version`` (changes when
another connection commits; a few microseconds) about every half millisecond
inside its thread, so it notices new messages within a millisecond or so
without burning CPU.

URL options:

- ``visibility_timeout`` (seconds, default 30): how long a fetched message stays
  leased before it is handed out again (workers extend what they hold).
- ``busy_timeout`` (seconds, default 5): how long to wait for the write lock.
- ``synchronous`` (``normal`` by default, or ``full``, ``off``): ``normal`` loses
  nothing when a process crashes, but may lose the last commits on power loss;
  ``full`` syncs every commit.
- ``poll_interval`` (seconds, default 0.0005): the pause between two checks of a
  waiting fetch while the database is busy; ``idle_poll_interval`` (default
  0.002): the pause once nothing has changed for 0.1 s (each check wakes a
  thread, which costs CPU even when there is nothing to do).
"""

from __future__ import annotations

import heapq
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from celeriac.abc import DeadLetter, Delivery, Outgoing, QueueStats, WorkerInfo
from celeriac.brokers._hub import Hub
from celeriac.brokers._sqlite_db import (
    Database,
    Pacer,
    chunks,
    placeholders,
    write_transaction,
)
from celeriac.brokers._url import BackendURL
from celeriac.errors import BrokerError

__all__ = ["SqliteBroker"]

_INSERT = (
    "INSERT INTO celeriac_messages (msg_id, queue, priority, available_at, body)"
    " VALUES (?, ?, ?, ?, ?)"
)
_RETURNING = " RETURNING id, msg_id, queue, priority, deliveries, body"
_INFO = msgspec.json.Decoder(WorkerInfo)


def open_database(parsed: BackendURL) -> Database:
    """The :class:`Database` for a ``sqlite:///`` URL, reading its common options."""
    return Database(
        parsed.file_path(),
        busy_timeout=parsed.number("busy_timeout", 5.0),
        synchronous=parsed.choice("synchronous", "normal", ("normal", "full", "off")),
    )


def pacing(parsed: BackendURL) -> tuple[float, float]:
    """The ``poll_interval`` and ``idle_poll_interval`` options of a ``sqlite:///`` URL."""
    fast = parsed.number("poll_interval", 0.0005, minimum=0.0001)
    return fast, parsed.number("idle_poll_interval", 0.002, minimum=fast)


class SqliteBroker:
    """A broker in one SQLite file (see the module docstring)."""

    def __init__(self, url: str, hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        self.url = url
        self.visibility_timeout = parsed.number("visibility_timeout", 30.0)
        self._db = open_database(parsed)
        self._pacing = pacing(parsed)
        parsed.finish()
        self._connected = False

    def __repr__(self) -> str:
        return f"<SqliteBroker {self.url!r}>"

    @property
    def path(self) -> str:
        """The absolute path of the database file."""
        return self._db.path

    async def connect(self) -> None:
        """Create the file, switch it to WAL mode and create the schema if missing."""
        if not self._connected:
            self._db.reopen()
            await self._db.run(self._db.setup)
            self._connected = True

    async def close(self) -> None:
        """Close the connections; unacked deliveries return when their lease ends."""
        self._connected = False
        self._db.close()

    # -- messages ---------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Insert ``messages`` in one transaction."""
        if not messages:
            return
        now = time.time()
        rows = [
            (m.id, m.queue, m.priority, m.eta if m.eta is not None and m.eta > now else 0.0, m.body)
            for m in messages
        ]
        queues = [(q,) for q in {m.queue for m in messages}]

        def insert(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                conn.executemany(_INSERT, rows)
                conn.executemany("INSERT OR IGNORE INTO celeriac_queues VALUES (?)", queues)

        await self._db.run(insert)

    async def fetch(
        self,
        queues: Sequence[str],
        limit: int,
        timeout: float,
    ) -> list[Delivery]:
        """Claim up to ``limit`` due messages, waiting up to ``timeout`` for the first."""
        if limit <= 0 or not queues:
            return []
        names = list(dict.fromkeys(queues))
        limit = min(limit, 5000)  # keeps each statement's parameters well under SQLite's cap

        def wait(conn: sqlite3.Connection, stop: threading.Event) -> list[Delivery]:
            return self._wait_and_claim(conn, stop, names, limit, timeout)

        return await self._db.run_interruptible(wait, self._unclaim)

    def _wait_and_claim(
        self,
        conn: sqlite3.Connection,
        stop: threading.Event,
        names: list[str],
        limit: int,
        timeout: float,
    ) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        pacer = Pacer(*self._pacing)
        seen = -1
        next_due = 0.0
        while True:
            version = conn.execute("PRAGMA data_version").fetchall()[0][0]
            now = time.time()
            if version != seen or now >= next_due:
                if seen != -1:
                    pacer.changed()
                seen = version
                next_due = self._next_due(conn, names)
                if next_due <= now:
                    claimed = self._claim(conn, names, limit, now)
                    if claimed:
                        return claimed
                    seen = -1  # taken by someone else, or revoked: look again
                    continue
            left = deadline - time.monotonic()
            if left <= 0 or stop.is_set():
                return []
            pacer.sleep(min(left, next_due - now))

    @staticmethod
    def _next_due(conn: sqlite3.Connection, names: list[str]) -> float:
        due = float("inf")
        for name in names:
            row = conn.execute(
                "SELECT min(available_at) FROM celeriac_messages WHERE queue = ?", (name,)
            ).fetchall()
            if row[0][0] is not None:
                due = min(due, row[0][0])
        return due

    def _claim(
        self, conn: sqlite3.Connection, names: list[str], limit: int, now: float
    ) -> list[Delivery]:
        with write_transaction(conn):
            rows = self._lease(conn, names, limit, now)
            if not rows:
                return []
            revoked: set[str] = set()
            for part in chunks([row[1] for row in rows]):
                revoked.update(
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM celeriac_revoked WHERE expires_at > ?"
                        f" AND id IN ({placeholders(len(part))})",
                        (now, *part),
                    ).fetchall()
                )
            if revoked:
                dropped = [(row[0],) for row in rows if row[1] in revoked]
                conn.executemany("DELETE FROM celeriac_messages WHERE id = ?", dropped)
                rows = [row for row in rows if row[1] not in revoked]
        rank_of = {name: i for i, name in enumerate(names)}
        rows.sort(key=lambda row: (-row[3], rank_of[row[2]], row[0]))
        return [
            Delivery(queue, msg_id, body, deliveries, (rowid, deliveries), priority)
            for rowid, msg_id, queue, priority, deliveries, body in rows
        ]

    def _lease(
        self, conn: sqlite3.Connection, names: list[str], limit: int, now: float
    ) -> list[Any]:
        """Lease the best ``limit`` due rows of ``names`` (inside a write transaction)."""
        lease = (
            "UPDATE celeriac_messages SET available_at = ?, deliveries = deliveries + 1,"
            " leased = 1 WHERE id IN ({})" + _RETURNING
        )
        best = (
            "SELECT id, priority FROM celeriac_messages INDEXED BY celeriac_messages_claim"
            " WHERE queue = ? AND available_at <= ? ORDER BY priority DESC, id LIMIT ?"
        )
        lease_end = now + self.visibility_timeout
        if len(names) == 1:
            sql = lease.format(best.replace("id, priority", "id", 1))
            return conn.execute(sql, (lease_end, names[0], now, limit)).fetchall()
        # One indexed walk per queue, merged here: a single query over several queues
        # would sort every due row of them for each claim.
        candidates: list[tuple[int, int, int]] = []
        for rank, name in enumerate(names):
            rows = conn.execute(best, (name, now, limit)).fetchall()
            candidates += [(-priority, rank, rowid) for rowid, priority in rows]
        chosen = [rowid for _, _, rowid in heapq.nsmallest(limit, candidates)]
        if not chosen:
            return []
        sql = lease.format(placeholders(len(chosen)))
        return conn.execute(sql, (lease_end, *chosen)).fetchall()

    def _unclaim(self, conn: sqlite3.Connection, deliveries: list[Delivery]) -> None:
        """Give back deliveries a cancelled fetch claimed: as if never handed out."""
        now = time.time()
        rows = [(now, *d.receipt) for d in deliveries]
        with write_transaction(conn):
            conn.executemany(
                "UPDATE celeriac_messages SET available_at = ?, deliveries = deliveries - 1,"
                " leased = deliveries > 1 WHERE id = ? AND deliveries = ?",
                rows,
            )

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete these messages (even if a later delivery of them is under way)."""
        rowids = [d.receipt[0] for d in deliveries]
        if rowids:
            await self._db.run(lambda conn: self._delete(conn, rowids))

    @staticmethod
    def _delete(conn: sqlite3.Connection, rowids: list[int]) -> None:
        with write_transaction(conn):
            for part in chunks(rowids):
                conn.execute(
                    f"DELETE FROM celeriac_messages WHERE id IN ({placeholders(len(part))})", part
                )

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        """Make these deliveries (if still current) due again after ``delay`` seconds."""
        if deliveries:
            await self._update_current(
                deliveries, "available_at = ?, leased = 0", time.time() + delay
            )

    async def extend(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Move the lease end of these deliveries (if still current) ``seconds`` ahead."""
        if deliveries:
            await self._update_current(deliveries, "available_at = ?", time.time() + seconds)

    async def _update_current(
        self, deliveries: Sequence[Delivery], assignments: str, available_at: float
    ) -> None:
        rows = [(available_at, *d.receipt) for d in deliveries]
        sql = (
            f"UPDATE celeriac_messages SET {assignments}"
            " WHERE id = ? AND deliveries = ? AND leased = 1"
        )

        def update(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                conn.executemany(sql, rows)

        await self._db.run(update)

    async def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue`` (not those in flight)."""

        def purge(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM celeriac_messages"
                " WHERE queue = ? AND (available_at <= ? OR leased = 0)",
                (queue, time.time()),
            ).rowcount

        return await self._db.run(purge)

    async def stats(self) -> Mapping[str, QueueStats]:
        """Counts per queue ever published to."""

        def count(conn: sqlite3.Connection) -> dict[str, QueueStats]:
            rows = conn.execute(
                "SELECT q.name, coalesce(sum(m.available_at <= :now), 0),"
                " coalesce(sum(m.available_at > :now AND m.leased = 0), 0),"
                " coalesce(sum(m.available_at > :now AND m.leased = 1), 0)"
                " FROM celeriac_queues q LEFT JOIN celeriac_messages m ON m.queue = q.name"
                " GROUP BY q.name",
                {"now": time.time()},
            ).fetchall()
            return {
                name: QueueStats(ready, delayed, flying) for name, ready, delayed, flying in rows
            }

        return await self._db.run(count)

    # -- dead letters -----------------------------------------------------------------

    async def dead_letter(self, deliveries: Sequence[Delivery], reason: str) -> None:
        """Delete these messages and keep them, with ``reason``, as dead letters."""
        if not deliveries:
            return
        at = time.time()
        letters = [
            (d.id, d.queue, d.priority, d.body, reason, at, d.deliveries) for d in deliveries
        ]
        rowids = [(d.receipt[0],) for d in deliveries]

        def move(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                conn.executemany("DELETE FROM celeriac_messages WHERE id = ?", rowids)
                conn.executemany(
                    "INSERT OR REPLACE INTO celeriac_dead_letters"
                    " (id, queue, priority, body, reason, at, deliveries)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    letters,
                )

        await self._db.run(move)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, newest first."""

        def select(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT id, queue, body, reason, at, deliveries FROM celeriac_dead_letters"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [DeadLetter(*row) for row in rows]

        return await self._db.run(select)

    async def replay(self, ids: Sequence[str]) -> int:
        """Re-publish these dead letters unchanged and delete them; return how many."""
        wanted = list(dict.fromkeys(ids))

        def replay(conn: sqlite3.Connection) -> int:
            count = 0
            with write_transaction(conn):
                for part in chunks(wanted):
                    marks = placeholders(len(part))
                    rows = conn.execute(
                        "SELECT id, queue, priority, 0.0, body FROM celeriac_dead_letters"
                        f" WHERE id IN ({marks})",
                        part,
                    ).fetchall()
                    conn.executemany(_INSERT, rows)
                    conn.executemany(
                        "INSERT OR IGNORE INTO celeriac_queues VALUES (?)", {(r[1],) for r in rows}
                    )
                    conn.execute(f"DELETE FROM celeriac_dead_letters WHERE id IN ({marks})", part)
                    count += len(rows)
            return count

        return await self._db.run(replay) if wanted else 0

    async def purge_dead_letters(self) -> int:
        """Delete all dead letters; return how many."""
        return await self._db.run(
            lambda conn: conn.execute("DELETE FROM celeriac_dead_letters").rowcount
        )

    # -- revocation -------------------------------------------------------------------

    async def revoke(self, ids: Sequence[str], ttl: float) -> None:
        """Record ``ids`` as revoked for ``ttl`` seconds (a repeat moves them up)."""
        now = time.time()
        rows = [(i, now + ttl) for i in dict.fromkeys(ids)]

        def record(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                conn.execute("DELETE FROM celeriac_revoked WHERE expires_at <= ?", (now,))
                conn.executemany("DELETE FROM celeriac_revoked WHERE id = ?", [r[:1] for r in rows])
                conn.executemany(
                    "INSERT INTO celeriac_revoked (id, expires_at) VALUES (?, ?)", rows
                )

        if rows:
            await self._db.run(record)

    async def revoked_since(self, cursor: Any) -> tuple[list[str], Any]:
        """Ids revoked after ``cursor`` (an opaque integer) and still recorded."""
        after = cursor if isinstance(cursor, int) else 0

        def select(conn: sqlite3.Connection) -> tuple[list[str], Any]:
            rows = conn.execute(
                "SELECT seq, id FROM celeriac_revoked WHERE seq > ? AND expires_at > ?"
                " ORDER BY seq",
                (after, time.time()),
            ).fetchall()
            last = conn.execute("SELECT max(seq) FROM celeriac_revoked").fetchall()[0][0]
            return [row[1] for row in rows], max(after, last or 0)

        return await self._db.run(select)

    # -- workers ----------------------------------------------------------------------

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Record that a worker is alive for ``ttl`` seconds."""
        now = time.time()
        row = (info.name, msgspec.json.encode(info), now + ttl)

        def record(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                conn.execute("DELETE FROM celeriac_workers WHERE expires_at <= ?", (now,))
                conn.execute("INSERT OR REPLACE INTO celeriac_workers VALUES (?, ?, ?)", row)

        await self._db.run(record)

    async def workers(self) -> list[WorkerInfo]:
        """The workers whose last heartbeat has not expired."""

        def select(conn: sqlite3.Connection) -> list[WorkerInfo]:
            rows = conn.execute(
                "SELECT info FROM celeriac_workers WHERE expires_at > ? ORDER BY name",
                (time.time(),),
            ).fetchall()
            try:
                return [_INFO.decode(row[0]) for row in rows]
            except msgspec.DecodeError as exc:
                raise BrokerError(f"{self.url}: unreadable worker heartbeat: {exc}") from exc

        return await self._db.run(select)

    async def forget_worker(self, name: str) -> None:
        """Remove a worker's heartbeat."""
        await self._db.run(
            lambda conn: conn.execute("DELETE FROM celeriac_workers WHERE name = ?", (name,))
        )
