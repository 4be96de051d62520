"""Nothing outlives its use: expired coordination state leaves the store.

Each primitive leaves something that expires; once it has, a later call (from a
new instance, which sweeps on its first call) must have deleted it from the
tables (SQLite, PostgreSQL), and Redis must have expired the keys itself.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
import redis
from tests.brokers._shared import REDIS_HOST, REDIS_PORT, postgres_sql

from celeriac.abc import Coordinator
from celeriac.brokers import Hub
from celeriac.brokers._url import BackendURL
from celeriac.coordination import open_coordinator

# The backends whose store several processes share (fixture shared_url, conftest.py).
BACKENDS = ["sqlite", "redis", "postgresql"]

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("shared_url", BACKENDS, indirect=True)]

TABLES = ["counters", "tallies", "members", "claims", "slots", "throttles"]


def _leftovers(url: str) -> dict[str, int]:
    """What the store still holds per primitive (rows, or Redis keys by kind)."""
    parts = urlsplit(url)
    options = {k: v[0] for k, v in parse_qs(parts.query).items()}
    if parts.scheme == "sqlite":
        with closing(sqlite3.connect(BackendURL(url).file_path())) as db:
            return {
                t: db.execute(f"SELECT count(*) FROM celeriac_co_{t}").fetchone()[0] for t in TABLES
            }
    if parts.scheme == "redis":
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
        try:
            keys = [k.decode() for k in client.scan_iter(match=f"{options['prefix']}:co:*")]
        finally:
            client.close()
        return {kind: sum(k.split(":")[-2] == kind for k in keys) for kind in "nmcst"}
    schema = options["schema"]
    return {
        t: int(postgres_sql(f'SELECT count(*) FROM "{schema}".celeriac_co_{t}')) for t in TABLES
    }


async def _open(url: str) -> Coordinator:
    coordinator = open_coordinator(url, Hub())
    await coordinator.connect()
    return coordinator


async def test_expired_state_is_deleted_and_live_state_kept(shared_url: str) -> None:
    ttl = 0.3
    first = await _open(shared_url)
    try:
        for name in ("a", "b"):
            await first.add(f"n-{name}", 1, ttl)
            await first.tally(f"m-{name}", "x", ttl)
            await first.tally(f"m-{name}", "y", ttl)
            await first.claim(f"c-{name}", "me", ttl)
            await first.acquire(f"s-{name}", "me", 1, ttl)
            await first.throttle(f"t-{name}", 1 / ttl, 1)  # idle again after ttl
        await first.add("n-live", 1, 60)
        await first.claim("c-live", "me", 60)
    finally:
        await first.close()
    await anyio.sleep(ttl + 0.5)
    sweeper = await _open(shared_url)
    try:
        assert await sweeper.add("n-live", 0, 60) == 1  # a call, which sweeps first
        assert await sweeper.claim("c-live", "other", 60) == "me"
    finally:
        await sweeper.close()
    left = _leftovers(shared_url)
    if shared_url.startswith("redis"):
        assert left == {"n": 1, "m": 0, "c": 1, "s": 0, "t": 0}
    else:
        assert left == {
            "counters": 1,
            "tallies": 0,
            "members": 0,
            "claims": 1,
            "slots": 0,
            "throttles": 0,
        }
