"""A backlog in a SQLite file: messages survive a crash of the publishing process.

Every message is written to the file (WAL mode) before ``append`` returns, and its
row is deleted only after its broker accepted it. Sending works from a deque in
memory, exactly as :class:`~celeriac.publisher.backlog.MemoryBacklog` does; the
file is only written (append, delete) and read once, at :meth:`SqliteBacklog.open`.

Several backlogs may share one file: the processes of one app (a web server and
its workers) often share their settings, and one process may run several
runtimes. Each open backlog is an *owner* with a random token, and its rows carry
that token. An owner is alive while it holds an exclusive ``flock`` on
``<file>.owners/<token>.lock``; the kernel drops that lock when the process
ends, however it ends (SIGKILL included). :meth:`SqliteBacklog.open` takes over
the rows of every owner that is not alive and sends them first, oldest first.

Durability: ``synchronous=normal`` (the default) makes an append survive a crash
of the process (the row is in the write-ahead log, handed to the OS, when
``append`` returns); ``synchronous=full`` also survives a crash of the machine,
at the cost of an ``fsync`` per message (milliseconds each).

If a write to the file fails (disk full, the file locked for longer than
``busy_timeout``), the message stays in memory only and is still sent, in its
place in the order (the CEP's fallback); a warning says so once per episode.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path

import anyio.to_thread

from celeriac.abc import Outgoing
from celeriac.brokers._sqlite_db import use_wal
from celeriac.brokers._url import BackendURL
from celeriac.publisher.backlog import MemoryBacklog, Ticket

__all__ = ["SqliteBacklog"]

log = logging.getLogger("celeriac.publisher")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_backlog (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the order messages came in
    owner TEXT NOT NULL,
    url TEXT NOT NULL,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    priority INTEGER NOT NULL,
    eta REAL
);
CREATE INDEX IF NOT EXISTS celeriac_backlog_owner ON celeriac_backlog (owner, id);
"""

_INSERT = (
    "INSERT INTO celeriac_backlog (owner, url, queue, message_id, body, priority, eta)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class SqliteBacklog(MemoryBacklog):
    """A backlog written through to a SQLite file (see the module docstring)."""

    durable = True

    def __init__(
        self, path: str | Path, *, synchronous: str = "normal", busy_timeout: float = 5.0
    ) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self.owner = uuid.uuid4().hex
        self.recovered = 0
        self.append = self._write
        self._lock = threading.Lock()  # the connection is used from any thread
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._failing = False
        self._undeleted: list[int] = []

    @classmethod
    def from_url(cls, url: str) -> SqliteBacklog:
        """From ``sqlite:///path.db?synchronous=full&busy_timeout=5``."""
        parsed = BackendURL(url)
        path = parsed.file_path()
        synchronous = parsed.choice("synchronous", "normal", ("normal", "full"))
        busy_timeout = parsed.number("busy_timeout", 5.0)
        parsed.finish()
        return cls(path, synchronous=synchronous, busy_timeout=busy_timeout)

    def __repr__(self) -> str:
        return f"<SqliteBacklog {self.path} {len(self._items)} waiting>"

    @property
    def _owners(self) -> Path:
        return Path(self.path + ".owners")

    # -- opening: claim what stopped owners left -------------------------------------

    def open(self, urls: Collection[str]) -> None:
        """Take ownership of a token, then of rows for ``urls`` whose owner is gone."""
        if self._conn is not None:
            return
        self._owners.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._hold_token()
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            use_wal(conn, self.busy_timeout)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
            self._conn = conn
            self._take_over(conn, urls)
        except BaseException:
            self.close()
            raise

    def _hold_token(self) -> int:
        # Locked before it gets its final name, so no one ever sees it unlocked.
        temporary = self._owners / f".{self.owner}.new"
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, self._owners / f"{self.owner}.lock")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _take_over(self, conn: sqlite3.Connection, urls: Collection[str]) -> None:
        owners = [o for (o,) in conn.execute("SELECT DISTINCT owner FROM celeriac_backlog")]
        held: list[tuple[str, int | None]] = []
        try:
            for owner in owners:
                if owner == self.owner:
                    continue
                gone, fd = self._gone(owner)
                if gone:
                    held.append((owner, fd))
            if held:
                marks = ",".join("?" * len(held))
                wanted = ",".join("?" * len(urls))
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(
                        f"UPDATE celeriac_backlog SET owner = ? WHERE owner IN ({marks})"
                        f" AND url IN ({wanted})",
                        (self.owner, *(o for o, _ in held), *urls),
                    )
                    left = conn.execute(
                        f"SELECT count(*) FROM celeriac_backlog WHERE owner IN ({marks})",
                        [o for o, _ in held],
                    ).fetchone()[0]
                if left:
                    log.warning(
                        "%s: %d message(s) left by a stopped process are for brokers this "
                        "app does not use; they stay in the file",
                        self.path,
                        left,
                    )
        finally:
            for owner, fd in held:
                (self._owners / f"{owner}.lock").unlink(missing_ok=True)
                if fd is not None:
                    os.close(fd)
        rows = conn.execute(
            "SELECT id, url, queue, message_id, body, priority, eta FROM celeriac_backlog"
            " WHERE owner = ? ORDER BY id",
            (self.owner,),
        ).fetchall()
        self._items.extend(
            Ticket(url, Outgoing(queue, message_id, body, priority, eta), row=row)
            for row, url, queue, message_id, body, priority, eta in rows
        )
        self.recovered = len(rows)
        if rows:
            log.info(
                "%s: %d message(s) left by a stopped process will be sent first",
                self.path,
                len(rows),
            )

    def _gone(self, owner: str) -> tuple[bool, int | None]:
        """Whether ``owner`` is gone, and its lock file's fd (locked by us), if it has one."""
        try:
            fd = os.open(self._owners / f"{owner}.lock", os.O_RDWR)
        except FileNotFoundError:
            return True, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False, None
        return True, fd

    def close(self) -> None:
        """Close the file; what was not sent stays there for the next owner."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            (self._owners / f"{self.owner}.lock").unlink(missing_ok=True)
            os.close(fd)

    # -- the publisher's side ---------------------------------------------------------

    def _write(self, ticket: Ticket) -> None:
        message = ticket.message
        assert message is not None
        with self._lock:
            try:
                if self._conn is None:
                    raise sqlite3.ProgrammingError("the backlog is not open")
                cursor = self._conn.execute(
                    _INSERT,
                    (
                        self.owner,
                        ticket.url,
                        message.queue,
                        message.id,
                        message.body,
                        message.priority,
                        message.eta,
                    ),
                )
                ticket.row = cursor.lastrowid
                if self._failing:
                    self._failing = False
                    log.info("%s: writing to the backlog file works again", self.path)
            except sqlite3.Error as exc:
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "%s: cannot write to the backlog file (%s); messages are kept in "
                        "memory only (and are lost if this process crashes) until it works",
                        self.path,
                        exc,
                    )
            self._items.append(ticket)

    async def remove(self, tickets: Sequence[Ticket]) -> None:
        """Delete the rows of ``tickets`` (their broker accepted them), off the loop."""
        rows = [t.row for t in tickets if t.row is not None]
        if self._undeleted:
            rows += self._undeleted
            self._undeleted = []
        if rows:
            await anyio.to_thread.run_sync(self._delete, rows)

    def _delete(self, rows: list[int]) -> None:
        with self._lock:
            conn = self._conn
            try:
                if conn is None:
                    raise sqlite3.ProgrammingError("the backlog is closed")
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(
                        "DELETE FROM celeriac_backlog WHERE id = ?", [(r,) for r in rows]
                    )
            except sqlite3.Error as exc:
                # Sent already: kept rows would be sent again by the next owner.
                self._undeleted.extend(rows)
                log.warning(
                    "%s: cannot delete %d sent message(s) from the backlog file (%s); "
                    "retrying with the next batch",
                    self.path,
                    len(rows),
                    exc,
                )
