"""``postgresql://``: a data sink in a PostgreSQL table, on asyncpg.

Documents are rows of ``celeriac_documents`` in the same schema as the
PostgreSQL broker's tables, so one URL serves both. A write is one upsert
statement per batch (arrays ``unnest``-ed on the server) that also sends a
``NOTIFY`` naming the ids and states written; a :meth:`PostgresSink.wait`
registers its ids here and sleeps until a notification names one of them in a
wanted state (or at least every ``poll_interval``, as a safety net), so a result
stored by a worker anywhere wakes its waiter within a round trip, and many
waiting results cost nothing per store.

Expired documents are invisible at once (``expires_at`` is compared with the
server's clock) and deleted by a later write, at most every 10 s.

URL options: ``schema``, ``pool_size``, ``connect_timeout``, ``command_timeout``
and ``poll_interval``, as for the broker (see :mod:`celeriac.brokers.postgres`);
the broker's ``visibility_timeout`` is accepted and ignored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec

from celeriac._notify import Notifier
from celeriac.abc import StoredDocument
from celeriac.brokers._hub import Hub
from celeriac.brokers._postgres_db import NOW, Database
from celeriac.brokers._url import BackendURL

__all__ = ["PostgresSink"]

_SWEEP_EVERY = 10.0  # seconds between two deletions of expired documents
_PAYLOAD_LIMIT = 7000  # bytes per NOTIFY payload (the server allows a little under 8000)
_ANY = "*"  # a payload that wakes every waiter (an entry too long to name)
_NAMES = msgspec.json.Decoder(list[tuple[str, str]])


def _payloads(documents: Sequence[StoredDocument]) -> list[str]:
    """NOTIFY payloads naming ``(id, state)`` of ``documents``, each under the size limit."""
    out: list[str] = []
    chunk: list[bytes] = []
    size = 2
    for doc in documents:
        entry = msgspec.json.encode((doc.id, doc.state))
        if len(entry) + 2 > _PAYLOAD_LIMIT:
            return [_ANY]
        if size + len(entry) + 1 > _PAYLOAD_LIMIT:
            out.append("[" + b",".join(chunk).decode() + "]")
            chunk, size = [], 2
        chunk.append(entry)
        size += len(entry) + 1
    if chunk:
        out.append("[" + b",".join(chunk).decode() + "]")
    return out


class _Waiters:
    """Who waits for which ids in which states; woken from asyncpg's loop (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, list[tuple[Notifier, frozenset[str]]]] = {}

    def add(self, ids: Sequence[str], notifier: Notifier, states: frozenset[str]) -> None:
        with self._lock:
            for key in ids:
                self._by_id.setdefault(key, []).append((notifier, states))

    def remove(self, ids: Sequence[str], notifier: Notifier) -> None:
        with self._lock:
            for key in ids:
                waiting = self._by_id.get(key)
                if waiting is not None:
                    waiting[:] = [w for w in waiting if w[0] is not notifier]
                    if not waiting:
                        del self._by_id[key]

    def notified(self, payload: str | None) -> None:
        """Wake the waiters a notification concerns (``None``: everyone, to look again)."""
        if not self._by_id:
            return
        woken: set[Notifier] = set()
        with self._lock:
            if payload is None or payload == _ANY:
                woken = {n for waiting in self._by_id.values() for n, _ in waiting}
            else:
                try:
                    named = _NAMES.decode(payload)
                except msgspec.DecodeError:
                    named = []
                    woken = {n for waiting in self._by_id.values() for n, _ in waiting}
                for key, state in named:
                    for notifier, states in self._by_id.get(key, ()):
                        if state in states:
                            woken.add(notifier)
        for notifier in woken:
            notifier.notify()


class PostgresSink:
    """A data sink in a PostgreSQL table (see the module docstring)."""

    def __init__(self, url: str, hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        self.url = url
        self._waiters = _Waiters()
        self._db = Database(parsed, "d", self._waiters.notified)
        parsed.ignore("visibility_timeout")  # the same URL often names the broker too
        parsed.finish()
        d = f"{self._db.s}.celeriac_documents"
        rows = f"""
            INSERT INTO {d} AS d (id, state, body, expires_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) AS r(id, state, body),
                (SELECT {NOW} + $4::float8) AS e(expires_at)
            ON CONFLICT (id) DO UPDATE SET state = excluded.state, body = excluded.body,
                expires_at = excluded.expires_at"""
        notify = "SELECT pg_notify($5, p) FROM unnest($6::text[]) AS n(p)"
        self._store = f"WITH written AS ({rows}) {notify}"
        # Where a live document exists, keep it; an expired one counts as absent.
        self._store_if_absent = (
            f"WITH written AS ({rows} WHERE d.expires_at IS NOT NULL AND d.expires_at <= {NOW})"
            f" {notify}"
        )
        self._select = (
            f"SELECT id, state, body FROM {d} WHERE id = ANY($1::text[])"
            f" AND (expires_at IS NULL OR expires_at > {NOW})"
        )
        self._forget = f"DELETE FROM {d} WHERE id = ANY($1::text[])"
        self._sweep = f"DELETE FROM {d} WHERE expires_at <= {NOW}"
        self._next_sweep = 0.0

    def __repr__(self) -> str:
        return f"<PostgresSink {self._db.display!r} schema={self._db.schema!r}>"

    async def connect(self) -> None:
        """Open the pool and create the schema and tables if missing."""
        await self._db.connect()

    async def close(self) -> None:
        """Close the connections."""
        await self._db.close()

    async def store(self, documents: Sequence[StoredDocument], ttl: float | None) -> None:
        """Upsert ``documents``, each expiring after ``ttl`` seconds (``None``: never)."""
        # A later document of the same id replaces an earlier one, as separate calls would.
        await self._write(list({d.id: d for d in documents}.values()), ttl, self._store)

    async def store_if_absent(self, documents: Sequence[StoredDocument], ttl: float | None) -> None:
        """Write each document only where no live document has its id."""
        first: dict[str, StoredDocument] = {}
        for doc in documents:
            first.setdefault(doc.id, doc)
        await self._write(list(first.values()), ttl, self._store_if_absent)

    async def _write(self, docs: list[StoredDocument], ttl: float | None, sql: str) -> None:
        if not docs:
            return
        args = (
            [d.id for d in docs],
            [d.state for d in docs],
            [d.body for d in docs],
            ttl,
            self._db.channel,
            _payloads(docs),
        )
        now = time.monotonic()
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + _SWEEP_EVERY
        await self._db.run(lambda c: c.execute(sql, *args))
        if sweep:
            await self._db.run(lambda c: c.execute(self._sweep))

    async def _read(
        self, ids: list[str], states: frozenset[str] | None, deadline: float | None = None
    ) -> dict[str, StoredDocument]:
        async def select(conn: Any) -> list[Any]:
            found: list[Any] = await conn.fetch(self._select, ids)
            return found

        if deadline is None:
            rows = await self._db.run(select)
        else:  # a wait rides out a server restart until its timeout
            rows = await self._db.run_until(select, deadline)
        return {
            key: StoredDocument(key, state, body)
            for key, state, body in rows
            if states is None or state in states
        }

    async def get(self, ids: Sequence[str]) -> dict[str, StoredDocument]:
        """The live documents among ``ids``."""
        keys = list(dict.fromkeys(ids))
        return await self._read(keys, None) if keys else {}

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
        db = self._db
        notifier = Notifier()
        deadline = anyio.current_time() + timeout
        self._waiters.add(keys, notifier, states)
        try:
            while True:
                version = notifier.version  # read before looking: a later store changes it
                found = await self._read(keys, states, deadline)
                left = deadline - anyio.current_time()
                if found or left <= 0:
                    return found
                if not db.listening:
                    await db.listen()
                await notifier.wait(version, min(left, db.poll_interval))
        finally:
            self._waiters.remove(keys, notifier)

    async def forget(self, ids: Sequence[str]) -> None:
        """Delete these documents."""
        keys = list(dict.fromkeys(ids))
        if keys:
            await self._db.run(lambda c: c.execute(self._forget, keys))
