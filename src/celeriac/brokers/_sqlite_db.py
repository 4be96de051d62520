"""One SQLite database file shared by the SQLite broker and sink: schema, connections.

The schema is file-wide: broker tables and sink tables live side by side, so the
default app keeps both in ``celeriac.db``. Every table name starts with
``celeriac_``, so the file can also be an application's own database.

Connections run in autocommit mode with explicit ``BEGIN IMMEDIATE`` for writes
(a deferred transaction that upgrades to a writer can fail with SQLITE_BUSY
without waiting), in WAL mode so readers never block the writer, with a
``busy_timeout`` so concurrent processes queue up for the write lock instead of
failing. Blocking calls run in worker threads; :class:`Database` lends each one a
pooled connection, so a fetch waiting in one thread never holds up an ack.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread

from celeriac.errors import BrokerError

__all__ = [
    "Database",
    "Interrupt",
    "Pacer",
    "chunks",
    "placeholders",
    "use_wal",
    "write_transaction",
]

T = TypeVar("T")

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO celeriac_meta (key, value) VALUES ('schema', '1');

CREATE TABLE IF NOT EXISTS celeriac_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a stale receipt never matches
    msg_id TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    available_at REAL NOT NULL,            -- eta, or the end of the current lease
    leased INTEGER NOT NULL DEFAULT 0,     -- 1 once handed out, 0 again after a nack
    deliveries INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_messages_claim
    ON celeriac_messages (queue, priority DESC, id, available_at);
CREATE INDEX IF NOT EXISTS celeriac_messages_due ON celeriac_messages (queue, available_at);

CREATE TABLE IF NOT EXISTS celeriac_queues (name TEXT PRIMARY KEY) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS celeriac_revoked (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    expires_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS celeriac_dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- newest last; a re-dead-lettered id moves up
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    deliveries INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS celeriac_workers (
    name TEXT PRIMARY KEY,
    info BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS celeriac_documents (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    body BLOB NOT NULL,
    expires_at REAL                        -- NULL: never
);
CREATE INDEX IF NOT EXISTS celeriac_documents_expiry
    ON celeriac_documents (expires_at) WHERE expires_at IS NOT NULL;
"""

# SQLite accepts 32766 bound parameters; stay far below it per statement.
_CHUNK = 500


def chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def placeholders(count: int) -> str:
    """``?, ?, ...`` for ``count`` parameters."""
    return ", ".join("?" * count)


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def use_wal(conn: sqlite3.Connection, patience: float) -> None:
    """Put the file in WAL mode, waiting out processes that are doing the same.

    Switching a new file to WAL takes an exclusive lock, and SQLite answers a
    second process racing for it with "database is locked" at once, without
    calling the busy handler. So the switch is retried, with a little jittered
    sleep, for up to ``patience`` seconds; a file already in WAL mode (the
    usual case) needs no lock at all.
    """
    deadline = time.monotonic() + patience
    pause = 0.005
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
            if str(mode).lower() != "wal":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
        except sqlite3.OperationalError as exc:
            message = str(exc).lower()
            if ("locked" not in message and "busy" not in message) or time.monotonic() > deadline:
                raise
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.25)
            continue
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL mode (journal_mode={mode})")
        return


class Pacer:
    """Paces a waiting call's checks of ``PRAGMA data_version``.

    Each wake-up costs some CPU (tens of microseconds on a VM), so a call checks
    every ``fast`` seconds while the database is busy (something changed in the
    last ``warm`` seconds, or the wait has just begun: a result is often on its
    way), and every ``slow`` seconds once it has been quiet for a while.
    """

    __slots__ = ("_last_change", "fast", "slow", "warm")

    def __init__(self, fast: float, slow: float, warm: float = 0.1) -> None:
        self.fast = fast
        self.slow = max(slow, fast)
        self.warm = warm
        self._last_change = time.monotonic()

    def changed(self) -> None:
        """Note that the database changed: check often again."""
        self._last_change = time.monotonic()

    def sleep(self, at_most: float) -> None:
        """Sleep until the next check, but no longer than ``at_most`` seconds."""
        quiet = time.monotonic() - self._last_change > self.warm
        time.sleep(max(0.0, min(self.slow if quiet else self.fast, at_most)))


class Interrupt(Generic[T]):
    """Hands a blocking call's result back, or undoes it if the caller was cancelled.

    A long call (a fetch waiting for messages) runs in a thread that the caller
    abandons when cancelled. Exactly one side then undoes what the call did
    (returns claimed messages): the thread, if it finishes after the cancellation,
    or the caller, if the thread had already finished.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._result: T | None = None

    def finish(self, result: T) -> bool:
        """Thread side: offer ``result``; False when the caller is gone (undo it)."""
        with self._lock:
            if self.stop.is_set():
                return False
            self._result = result
            return True

    def cancel(self) -> T | None:
        """Caller side: stop the thread; a result it already offered (to undo), if any."""
        with self._lock:
            self.stop.set()
            result, self._result = self._result, None
            return result


class Database:
    """A pool of connections to one SQLite file, used from worker threads."""

    def __init__(self, path: str, *, busy_timeout: float, synchronous: str) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._open = 0
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def acquire(self) -> sqlite3.Connection:
        """A connection for the calling thread's exclusive use until :meth:`release`."""
        with self._lock:
            if self._closed:
                raise BrokerError(f"sqlite:///{self.path}: closed")
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            return self._connect()
        except BaseException:
            with self._lock:
                self._open -= 1
            raise

    def release(self, conn: sqlite3.Connection) -> None:
        """Return a connection to the pool (closing it if the pool has closed)."""
        if conn.in_transaction:  # only after a failure in the middle of one
            conn.rollback()
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
            self._open -= 1
        conn.close()

    def setup(self, conn: sqlite3.Connection) -> None:
        """Blocking: switch the file to WAL mode and create the schema if missing."""
        use_wal(conn, self.busy_timeout)
        try:
            conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def reopen(self) -> None:
        """Lend connections again after :meth:`close`."""
        with self._lock:
            self._closed = False

    def close(self) -> None:
        """Close idle connections now and busy ones when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for conn in idle:
            conn.close()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` in a worker thread; sqlite errors become BrokerError."""
        return await anyio.to_thread.run_sync(self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self.acquire()
            try:
                return fn(conn)
            finally:
                self.release(conn)
        except sqlite3.Error as exc:
            raise BrokerError(f"sqlite:///{self.path}: {exc}") from exc

    async def run_interruptible(
        self,
        fn: Callable[[sqlite3.Connection, threading.Event], T],
        undo: Callable[[sqlite3.Connection, T], Any],
    ) -> T:
        """Like :meth:`run` for a long call that watches its stop event.

        If the caller is cancelled, the thread is told to stop and whatever it
        already did is undone with ``undo(connection, result)``, so nothing is
        lost with the abandoned thread.
        """
        handoff: Interrupt[T] = Interrupt()

        def body(conn: sqlite3.Connection) -> T:
            result = fn(conn, handoff.stop)
            if not handoff.finish(result):
                undo(conn, result)
            return result

        try:
            return await anyio.to_thread.run_sync(self._call, body, abandon_on_cancel=True)
        except BaseException:
            result = handoff.cancel()
            if result:
                with anyio.CancelScope(shield=True):
                    await self.run(lambda conn: undo(conn, result))
            raise
