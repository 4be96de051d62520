"""``sqlite:///path.db``: the embedded default data sink, on the stdlib ``sqlite3``.

Documents live in the ``celeriac_documents`` table of the same file-wide schema
as the SQLite broker, so one ``celeriac.db`` holds both. Writes are upserts in
one transaction per batch; a :meth:`SqliteSink.wait` polls ``PRAGMA
data_version`` inside one thread hop and re-reads only when another connection
has committed, so a result stored by a worker process is seen within about a
millisecond. Expired documents are invisible at once and deleted by later writes.

URL options: ``busy_timeout``, ``synchronous``, ``poll_interval`` and
``idle_poll_interval``, as for the SQLite broker (see :mod:`celeriac.brokers.sqlite`);
the broker's ``visibility_timeout`` is accepted and ignored, so one URL serves both.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence

from celeriac.abc import StoredDocument
from celeriac.brokers._hub import Hub
from celeriac.brokers._sqlite_db import Database, Pacer, chunks, placeholders, write_transaction
from celeriac.brokers._url import BackendURL
from celeriac.brokers.sqlite import open_database, pacing

__all__ = ["SqliteSink"]

_UPSERT = (
    "INSERT INTO celeriac_documents (id, state, body, expires_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, body = excluded.body,"
    " expires_at = excluded.expires_at"
)
# Where a live document exists, keep it; an expired one counts as absent.
_INSERT_IF_ABSENT = (
    _UPSERT + " WHERE celeriac_documents.expires_at IS NOT NULL"
    " AND celeriac_documents.expires_at <= ?"
)
_SWEEP_EVERY = 10.0  # seconds between two deletions of expired documents


class SqliteSink:
    """A data sink in one SQLite file (see the module docstring)."""

    def __init__(self, url: str, hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        self.url = url
        self._db: Database = open_database(parsed)
        self._pacing = pacing(parsed)
        parsed.ignore("visibility_timeout")  # the same URL often names the broker too
        parsed.finish()
        self._connected = False
        self._next_sweep = 0.0

    def __repr__(self) -> str:
        return f"<SqliteSink {self.url!r}>"

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
        """Close the connections."""
        self._connected = False
        self._db.close()

    async def store(self, documents: Sequence[StoredDocument], ttl: float | None) -> None:
        """Upsert ``documents``, each expiring after ``ttl`` seconds (``None``: never)."""
        await self._write(documents, ttl, only_absent=False)

    async def store_if_absent(self, documents: Sequence[StoredDocument], ttl: float | None) -> None:
        """Write each document only where no live document has its id."""
        await self._write(documents, ttl, only_absent=True)

    async def _write(
        self, documents: Sequence[StoredDocument], ttl: float | None, *, only_absent: bool
    ) -> None:
        if not documents:
            return
        now = time.time()
        expires_at = None if ttl is None else now + ttl
        if only_absent:
            sql = _INSERT_IF_ABSENT
            rows: list[tuple[object, ...]] = [
                (d.id, d.state, d.body, expires_at, now) for d in documents
            ]
        else:
            sql, rows = _UPSERT, [(d.id, d.state, d.body, expires_at) for d in documents]
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + _SWEEP_EVERY

        def write(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                conn.executemany(sql, rows)
                if sweep:
                    conn.execute(
                        "DELETE FROM celeriac_documents WHERE expires_at <= ?"
                        " AND expires_at IS NOT NULL",
                        (now,),
                    )

        await self._db.run(write)

    @staticmethod
    def _select(
        conn: sqlite3.Connection, ids: list[str], states: frozenset[str] | None
    ) -> dict[str, StoredDocument]:
        found: dict[str, StoredDocument] = {}
        now = time.time()
        for part in chunks(ids):
            rows = conn.execute(
                "SELECT id, state, body FROM celeriac_documents"
                f" WHERE id IN ({placeholders(len(part))})"
                " AND (expires_at IS NULL OR expires_at > ?)",
                (*part, now),
            ).fetchall()
            for key, state, body in rows:
                if states is None or state in states:
                    found[key] = StoredDocument(key, state, body)
        return found

    async def get(self, ids: Sequence[str]) -> dict[str, StoredDocument]:
        """The live documents among ``ids``."""
        keys = list(dict.fromkeys(ids))
        if not keys:
            return {}
        return await self._db.run(lambda conn: self._select(conn, keys, None))

    async def wait(
        self,
        ids: Sequence[str],
        timeout: float,
        states: frozenset[str],
    ) -> dict[str, StoredDocument]:
        """Documents among ``ids`` in ``states``, as soon as there is one (or at timeout)."""
        keys = list(dict.fromkeys(ids))
        if not keys:
            return {}

        def poll(conn: sqlite3.Connection, stop: threading.Event) -> dict[str, StoredDocument]:
            deadline = time.monotonic() + timeout
            pacer = Pacer(*self._pacing)
            seen = -1
            while True:
                version = conn.execute("PRAGMA data_version").fetchall()[0][0]
                if version != seen:
                    if seen != -1:
                        pacer.changed()
                    seen = version
                    found = self._select(conn, keys, states)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or stop.is_set():
                    return {}
                pacer.sleep(left)

        return await self._db.run_interruptible(poll, lambda conn, found: None)

    async def forget(self, ids: Sequence[str]) -> None:
        """Delete these documents."""
        keys = list(dict.fromkeys(ids))

        def delete(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                for part in chunks(keys):
                    conn.execute(
                        f"DELETE FROM celeriac_documents WHERE id IN ({placeholders(len(part))})",
                        part,
                    )

        if keys:
            await self._db.run(delete)
