"""celeriac on PostgreSQL, with the workloads of ``celeriac_redis.py`` (no peer runs here).

The broker is ``postgresql://postgres@127.0.0.1:5432/test`` with every table in a
schema of the bench's own, ``celeriac_bench`` (URL option ``schema``), dropped
(``DROP SCHEMA ... CASCADE``) before and after every repetition; the broker creates
it again on connect. Results go to the PostgreSQL sink beside the broker, in the
same schema.
"""

from __future__ import annotations

from bench.systems.celeriac_common import run_async
from bench.systems.celeriac_servers import Server, scenarios

__all__ = ["DESCRIPTION", "SCENARIOS", "SERVER"]

DATABASE = "postgresql://postgres@127.0.0.1:5432/test"
SCHEMA = "celeriac_bench"
URL = f"{DATABASE}?schema={SCHEMA}"


def _reset() -> None:
    """Drop the bench's schema, tables and all."""
    import asyncpg  # type: ignore[import-untyped]

    async def drop() -> None:
        conn = await asyncpg.connect(DATABASE, timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        finally:
            await conn.close()

    run_async(drop)


SERVER = Server(
    name="postgres",
    label="PostgreSQL",
    broker=URL,
    reset=_reset,
    backend=("celeriac.brokers.postgres", "celeriac.sinks.postgres"),
    client="asyncpg",
    extra="postgres",
    tidy=True,
)

DESCRIPTION = f"""\
- **On PostgreSQL** (`postgres-*`): `App("bench", "{URL}")`: every table in the
  schema `{SCHEMA}`, dropped before and after every run (the broker creates it again on
  connect). Results go to the PostgreSQL sink beside the broker, in the same schema.
  The server as it is set up here (PostgreSQL 15, `fsync` and `synchronous_commit` on,
  autovacuum off: the tables are new in every run). Worker, producer and workloads as on
  Redis; no peer runs on PostgreSQL, so these rows have no target.
"""

SCENARIOS = scenarios(SERVER)
