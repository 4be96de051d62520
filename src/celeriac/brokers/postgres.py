"""``postgresql://``: a broker in PostgreSQL tables, on asyncpg.

Messages are rows of one table. A fetch claims the best due rows with one
statement: ``SELECT ... ORDER BY priority DESC, id LIMIT n FOR UPDATE SKIP
LOCKED`` (per queue, merged) inside an ``UPDATE ... RETURNING`` that moves
``available_at`` to the end of the lease, so concurrent consumers never wait for
each other, and eta and lease expiry are the same column: a consumer that dies
(even by SIGKILL) simply lets its leases run out. The same statement drops
revoked rows and reports when the next row of these queues comes due.

Idle consumers do not poll: publish, nack and replay send ``NOTIFY`` (one per
queue per batch), and a LISTEN connection wakes the waiting fetches of this
broker. A waiting fetch also wakes when the next delayed message or expiring
lease comes due, and at least every ``poll_interval`` as a safety net. Every
method is one statement (one round trip) per batch, whatever its size: arrays
travel as parameters and are ``unnest``-ed on the server.

The server's clock rules leases, delays of nacks, TTLs and expiry (many workers,
one clock); an ``eta`` is the producer's unix time, compared with the server's.

URL options (besides libpq's ``sslmode``, ``application_name``... passed to asyncpg):

- ``visibility_timeout`` (seconds, default 30): how long a fetched message stays
  leased before it is handed out again (workers extend what they hold).
- ``schema`` (default ``celeriac``): the schema holding every table; created on
  connect, with the tables, if missing.
- ``pool_size`` (default 10): the most connections this broker opens (plus one
  for LISTEN once it waits for messages).
- ``connect_timeout`` (default 5), ``command_timeout`` (default 30): seconds.
- ``poll_interval`` (default 1): the longest a waiting fetch goes without a look.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import msgspec

from celeriac._notify import Notifier
from celeriac.abc import DeadLetter, Delivery, Outgoing, QueueStats, WorkerInfo
from celeriac.brokers._hub import Hub
from celeriac.brokers._postgres_db import NOW, Database
from celeriac.brokers._url import BackendURL
from celeriac.errors import BrokerError

__all__ = ["PostgresBroker"]

_INFO = msgspec.json.Decoder(WorkerInfo)
_MAX_FETCH = 10_000
# Nothing claimable although something is due (rows locked by another claim in
# flight): look again after this long, or as soon as something is published.
_RETRY = 0.005


def _sql(s: str) -> dict[str, str]:
    """Every statement of the broker, for the quoted schema ``s``."""
    m, q = f"{s}.celeriac_messages", f"{s}.celeriac_queues"
    batch_in = """
        INSERT INTO {q} (name) SELECT DISTINCT queue FROM {src} ORDER BY 1 ON CONFLICT DO NOTHING
    """
    current = """
        FROM unnest($1::bigint[], $2::int[]) AS r(id, deliveries)
        WHERE m.id = r.id AND m.deliveries = r.deliveries AND m.leased
    """
    # Claims and lease extensions commit without waiting for the WAL flush (this
    # transaction only): if the server crashes before the flush, the message is
    # simply handed out again, as at-least-once allows. Everything else waits.
    relaxed = "relaxed AS (SELECT set_config('synchronous_commit', 'off', true))"
    return {
        "publish": f"""
            WITH batch AS MATERIALIZED (
                SELECT * FROM unnest($1::text[], $2::text[], $3::int2[], $4::float8[], $5::bytea[])
                    WITH ORDINALITY AS b(msg_id, queue, priority, eta, body, n)
            ), inserted AS (
                INSERT INTO {m} (msg_id, queue, priority, available_at, body)
                SELECT msg_id, queue, priority, coalesce(eta, 0), body FROM batch ORDER BY n
            ), known AS ({batch_in.format(q=q, src="batch")})
            SELECT pg_notify($6, queue) FROM (SELECT DISTINCT queue FROM batch) d""",
        "claim": f"""
            WITH {relaxed}, picked AS MATERIALIZED (
                SELECT c.id, EXISTS (
                    SELECT 1 FROM {s}.celeriac_revoked r
                    WHERE r.id = c.msg_id AND r.expires_at > {NOW}
                ) AS gone
                FROM unnest($1::text[]) WITH ORDINALITY AS q(name, rank)
                CROSS JOIN LATERAL (
                    SELECT m.id, m.msg_id, m.priority FROM {m} m
                    WHERE m.queue = q.name AND m.available_at <= {NOW}
                    ORDER BY m.priority DESC, m.id LIMIT $2
                    FOR UPDATE SKIP LOCKED
                ) c
                ORDER BY c.priority DESC, q.rank, c.id LIMIT $2
            ), dropped AS (
                DELETE FROM {m} WHERE id = ANY(ARRAY(SELECT id FROM picked WHERE gone))
                RETURNING id
            ), claimed AS (
                UPDATE {m} SET available_at = {NOW} + $3, leased = true,
                    deliveries = deliveries + 1
                WHERE id = ANY(ARRAY(SELECT id FROM picked WHERE NOT gone))
                RETURNING id, msg_id, queue, priority, deliveries, body
            )
            SELECT id, msg_id, queue, priority, deliveries, body, NULL::float8 AS due
            FROM claimed
            UNION ALL
            SELECT NULL, NULL, NULL, NULL, (SELECT count(*) FROM dropped)::int, NULL,
                (SELECT min(d.at) FROM unnest($1::text[]) AS q(name) CROSS JOIN LATERAL (
                    SELECT m.available_at AS at FROM {m} m WHERE m.queue = q.name
                    ORDER BY m.available_at LIMIT 1) d) - {NOW}
            FROM relaxed""",
        "ack": f"DELETE FROM {m} WHERE id = ANY($1::bigint[])",
        "nack": f"""
            WITH released AS (
                UPDATE {m} m SET available_at = {NOW} + $3, leased = false {current}
                RETURNING m.queue
            )
            SELECT pg_notify($4, queue) FROM (SELECT DISTINCT queue FROM released) d""",
        "extend": f"""
            WITH {relaxed} UPDATE {m} m SET available_at = {NOW} + $3
            FROM relaxed, unnest($1::bigint[], $2::int[]) AS r(id, deliveries)
            WHERE m.id = r.id AND m.deliveries = r.deliveries AND m.leased""",
        "purge": f"""
            WITH gone AS (
                DELETE FROM {m} WHERE queue = $1 AND (available_at <= {NOW} OR NOT leased)
                RETURNING 1
            )
            SELECT count(*) FROM gone""",
        "stats": f"""
            SELECT q.name,
                count(m.id) FILTER (WHERE m.available_at <= {NOW}),
                count(m.id) FILTER (WHERE m.available_at > {NOW} AND NOT m.leased),
                count(m.id) FILTER (WHERE m.available_at > {NOW} AND m.leased)
            FROM {q} q LEFT JOIN {m} m ON m.queue = q.name GROUP BY q.name""",
        "dead_letter": f"""
            WITH removed AS (DELETE FROM {m} WHERE id = ANY($1::bigint[]))
            INSERT INTO {s}.celeriac_dead_letters
                (id, queue, priority, body, reason, at, deliveries)
            SELECT msg_id, queue, priority, body, $7, {NOW}, deliveries
            FROM unnest($2::text[], $3::text[], $4::int2[], $5::bytea[], $6::int[])
                WITH ORDINALITY AS l(msg_id, queue, priority, body, deliveries, n)
            ORDER BY n
            ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, queue = excluded.queue,
                priority = excluded.priority, body = excluded.body, reason = excluded.reason,
                at = excluded.at, deliveries = excluded.deliveries""",
        "dead_letters": f"""
            SELECT id, queue, body, reason, at, deliveries FROM {s}.celeriac_dead_letters
            ORDER BY seq DESC LIMIT $1""",
        "replay": f"""
            WITH taken AS (
                DELETE FROM {s}.celeriac_dead_letters WHERE id = ANY($1::text[])
                RETURNING seq, id, queue, priority, body
            ), inserted AS (
                INSERT INTO {m} (msg_id, queue, priority, available_at, body)
                SELECT id, queue, priority, 0, body FROM taken ORDER BY seq
            ), known AS ({batch_in.format(q=q, src="taken")})
            SELECT (SELECT count(*) FROM taken)::int,
                (SELECT count(*) FROM (SELECT DISTINCT queue FROM taken) d
                 WHERE pg_notify($2, queue) IS NULL)::int""",
        "purge_dead_letters": f"""
            WITH gone AS (DELETE FROM {s}.celeriac_dead_letters RETURNING 1)
            SELECT count(*) FROM gone""",
        "lock_revoked": f"LOCK TABLE {s}.celeriac_revoked IN SHARE ROW EXCLUSIVE MODE",
        "revoke": f"""
            WITH expired AS (
                DELETE FROM {s}.celeriac_revoked
                WHERE expires_at <= {NOW} AND id <> ALL($1::text[])
            )
            INSERT INTO {s}.celeriac_revoked (id, expires_at)
            SELECT id, {NOW} + $2 FROM unnest($1::text[]) AS r(id)
            ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, expires_at = excluded.expires_at""",
        "revoked_since": f"""
            SELECT (SELECT max(seq) FROM {s}.celeriac_revoked),
                ARRAY(SELECT id FROM {s}.celeriac_revoked
                      WHERE seq > $1 AND expires_at > {NOW} ORDER BY seq)""",
        "heartbeat": f"""
            WITH expired AS (
                DELETE FROM {s}.celeriac_workers WHERE expires_at <= {NOW} AND name <> $1
            )
            INSERT INTO {s}.celeriac_workers (name, info, expires_at)
            VALUES ($1, $2::jsonb, {NOW} + $3)
            ON CONFLICT (name) DO UPDATE SET info = excluded.info,
                expires_at = excluded.expires_at""",
        "workers": f"""
            SELECT info::text FROM {s}.celeriac_workers WHERE expires_at > {NOW}
            ORDER BY name""",
        "forget_worker": f"DELETE FROM {s}.celeriac_workers WHERE name = $1",
    }


def _fenced(deliveries: Sequence[Delivery]) -> tuple[list[int], list[int]]:
    """Row ids and delivery counts of ``deliveries``, sorted by id (a stable lock order)."""
    pairs = sorted({d.receipt for d in deliveries})
    return [p[0] for p in pairs], [p[1] for p in pairs]


class PostgresBroker:
    """A broker in PostgreSQL tables (see the module docstring)."""

    def __init__(self, url: str, hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        self.url = url
        self.visibility_timeout = parsed.number("visibility_timeout", 30.0)
        #: bumped by every notification (and whenever some may have been missed)
        self.notifier = Notifier()
        self._db = Database(parsed, "m", lambda _payload: self.notifier.notify())
        parsed.finish()
        self._sql = _sql(self._db.s)

    def __repr__(self) -> str:
        return f"<PostgresBroker {self._db.display!r} schema={self._db.schema!r}>"

    @property
    def schema(self) -> str:
        """The schema holding this broker's tables."""
        return self._db.schema

    async def connect(self) -> None:
        """Open the pool and create the schema and tables if missing."""
        await self._db.connect()

    async def close(self) -> None:
        """Close the connections; unacked deliveries return when their lease ends."""
        await self._db.close()

    # -- messages ---------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Insert ``messages`` with one statement (one transaction), then NOTIFY per queue."""
        if not messages:
            return
        args = (
            [m.id for m in messages],
            [m.queue for m in messages],
            [m.priority for m in messages],
            [m.eta for m in messages],
            [m.body for m in messages],
            self._db.channel,
        )
        await self._db.run(lambda c: c.execute(self._sql["publish"], *args))

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Claim up to ``limit`` due messages, waiting up to ``timeout`` for the first."""
        if limit <= 0 or not queues:
            return []
        names = list(dict.fromkeys(queues))
        limit = min(limit, _MAX_FETCH)
        db, notifier = self._db, self.notifier
        deadline = anyio.current_time() + timeout
        while True:
            version = notifier.version
            # Shielded: a claim that went through is always returned, never lost to a
            # cancellation (the command timeout bounds it). While the server is away,
            # the fetch keeps trying until its own timeout, then raises.
            claimed, dropped, due_in = await db.run_until(
                lambda c: self._claim(c, names, limit), deadline, shield=True
            )
            if claimed:
                return claimed
            if dropped:
                continue  # revoked rows were in the way: look again
            left = deadline - anyio.current_time()
            if left <= 0:
                return []
            if not db.listening:
                await db.listen()
            wait = min(left, db.poll_interval)
            if due_in is not None:
                wait = min(wait, max(due_in, _RETRY))
            await notifier.wait(version, wait)

    async def _claim(
        self, conn: Any, names: list[str], limit: int
    ) -> tuple[list[Delivery], int, float | None]:
        rows = await conn.fetch(self._sql["claim"], names, limit, self.visibility_timeout)
        summary = next(r for r in rows if r[0] is None)  # one row: dropped count, next due
        rank = {name: i for i, name in enumerate(names)}
        claimed = sorted(
            (r for r in rows if r[0] is not None), key=lambda r: (-r[3], rank[r[2]], r[0])
        )
        deliveries = [
            Delivery(queue, msg_id, body, count, (rowid, count), priority)
            for rowid, msg_id, queue, priority, count, body, _ in claimed
        ]
        return deliveries, summary[4], summary[6]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete these messages (even if a later delivery of them is under way)."""
        if deliveries:
            ids = sorted({d.receipt[0] for d in deliveries})
            await self._db.run(lambda c: c.execute(self._sql["ack"], ids))

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        """Make these deliveries (if still current) due again after ``delay`` seconds."""
        if deliveries:
            ids, counts = _fenced(deliveries)
            args = (ids, counts, max(delay, 0.0), self._db.channel)
            await self._db.run(lambda c: c.execute(self._sql["nack"], *args))

    async def extend(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Move the lease end of these deliveries (if still current) ``seconds`` ahead."""
        if deliveries:
            ids, counts = _fenced(deliveries)
            await self._db.run(lambda c: c.execute(self._sql["extend"], ids, counts, seconds))

    async def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue`` (not those in flight)."""
        count: int = await self._db.run(lambda c: c.fetchval(self._sql["purge"], queue))
        return count

    async def stats(self) -> Mapping[str, QueueStats]:
        """Counts per queue ever published to."""
        rows = await self._db.run(lambda c: c.fetch(self._sql["stats"]))
        return {name: QueueStats(ready, delayed, flying) for name, ready, delayed, flying in rows}

    # -- dead letters -----------------------------------------------------------------

    async def dead_letter(self, deliveries: Sequence[Delivery], reason: str) -> None:
        """Delete these messages and keep them, with ``reason``, as dead letters."""
        if not deliveries:
            return
        last = list({d.id: d for d in deliveries}.values())  # one letter per message id
        args = (
            sorted({d.receipt[0] for d in deliveries}),
            [d.id for d in last],
            [d.queue for d in last],
            [d.priority for d in last],
            [d.body for d in last],
            [d.deliveries for d in last],
            reason,
        )
        await self._db.run(lambda c: c.execute(self._sql["dead_letter"], *args))

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, newest first."""
        rows = await self._db.run(lambda c: c.fetch(self._sql["dead_letters"], limit))
        return [DeadLetter(*row) for row in rows]

    async def replay(self, ids: Sequence[str]) -> int:
        """Re-publish these dead letters unchanged and delete them; return how many."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        sql, channel = self._sql["replay"], self._db.channel
        row = await self._db.run(lambda c: c.fetchrow(sql, wanted, channel))
        count: int = row[0]
        return count

    async def purge_dead_letters(self) -> int:
        """Delete all dead letters; return how many."""
        count: int = await self._db.run(lambda c: c.fetchval(self._sql["purge_dead_letters"]))
        return count

    # -- revocation -------------------------------------------------------------------

    async def revoke(self, ids: Sequence[str], ttl: float) -> None:
        """Record ``ids`` as revoked for ``ttl`` seconds (a repeat moves them up)."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return

        async def record(conn: Any) -> None:
            # Revokers take turns, so sequence order is commit order and a reader's
            # cursor never skips a revocation that commits late.
            async with conn.transaction():
                await conn.execute(self._sql["lock_revoked"])
                await conn.execute(self._sql["revoke"], wanted, ttl)

        await self._db.run(record)

    async def revoked_since(self, cursor: Any) -> tuple[list[str], Any]:
        """Ids revoked after ``cursor`` (an opaque integer) and still recorded."""
        after = cursor if isinstance(cursor, int) else 0
        row = await self._db.run(lambda c: c.fetchrow(self._sql["revoked_since"], after))
        last, ids = row[0], row[1]
        return list(ids), max(after, last or 0)

    # -- workers ----------------------------------------------------------------------

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Record that a worker is alive for ``ttl`` seconds."""
        data = msgspec.json.encode(info).decode()
        await self._db.run(lambda c: c.execute(self._sql["heartbeat"], info.name, data, ttl))

    async def workers(self) -> list[WorkerInfo]:
        """The workers whose last heartbeat has not expired."""
        rows = await self._db.run(lambda c: c.fetch(self._sql["workers"]))
        try:
            return [_INFO.decode(row[0]) for row in rows]
        except msgspec.DecodeError as exc:
            raise BrokerError(f"{self._db.display}: unreadable worker heartbeat: {exc}") from exc

    async def forget_worker(self, name: str) -> None:
        """Remove a worker's heartbeat."""
        await self._db.run(lambda c: c.execute(self._sql["forget_worker"], name))
