"""``redis://host:6379/0``: coordination state in Redis, one Lua script per operation.

Keys live under the URL's ``prefix`` (``P``), one key per primitive and name, each
with a Redis expiry so nothing outlives its use:

| primitive | key | type |
| --- | --- | --- |
| counter | ``P:co:n:KEY`` | string (``INCRBY``) |
| tally | ``P:co:m:KEY`` | set of members |
| claim | ``P:co:c:KEY`` | string: the owner, ``PX`` ttl |
| semaphore | ``P:co:s:KEY`` | sorted set: holder by lease end (µs, server time) |
| throttle | ``P:co:t:KEY`` | string: GCRA's theoretical arrival time (µs, server time) |

Every operation is one script, so it is atomic on the server and one round trip.
Time is the server's: scripts read ``TIME``, and Redis's own key expiry runs on its
clock; the clients' clocks play no part. Scripts name their key in ``KEYS``.

URL options: those of the Redis broker (:mod:`celeriac.brokers.redis`); its
``visibility_timeout`` is accepted and ignored, so one URL serves both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from celeriac.brokers._hub import Hub
from celeriac.brokers._redis import RedisConnection, RedisOptions
from celeriac.brokers._url import BackendURL
from celeriac.coordination._rules import (
    check_limit,
    check_rate,
    check_ttl,
    interval_us,
    members_of,
    micros,
)

__all__ = ["RedisCoordinator"]

# ARGV: ttl in ms (-1: none; 0: expire at once), then the operation's own.
_EXPIRE = """
local function expire(key, ms)
  if ms < 0 then redis.call('PERSIST', key) else redis.call('PEXPIRE', key, ms) end
end
"""

_ADD = (
    _EXPIRE
    + """
local value = redis.call('INCRBY', KEYS[1], ARGV[2])
expire(KEYS[1], tonumber(ARGV[1]))
return value
"""
)

_TALLY = (
    _EXPIRE
    + """
for i = 2, #ARGV, 1000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local count = redis.call('SCARD', KEYS[1])
expire(KEYS[1], tonumber(ARGV[1]))
return count
"""
)

# ARGV: ttl ms (0: give the claim up at once), owner.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[2] then return current end
local ms = tonumber(ARGV[1])
if ms > 0 then redis.call('SET', KEYS[1], ARGV[2], 'PX', ms) else redis.call('DEL', KEYS[1]) end
return ARGV[2]
"""

# Server time in microseconds (a double holds it exactly). Numbers go to redis.call
# through num(): Lua's own conversion keeps only 14 digits.
_NOW = """
local function num(x) return string.format('%.17g', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# ARGV: ttl µs, holder, limit. A lease is live while its end > now.
_ACQUIRE = (
    _NOW
    + """
local key, ttl, holder, limit = KEYS[1], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local mine = redis.call('ZSCORE', key, holder)
redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now))
if not (mine and tonumber(mine) > now) and redis.call('ZCARD', key) >= limit then
  return 0
end
redis.call('ZADD', key, num(now + ttl), holder)
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if #last > 0 then
  redis.call('PEXPIREAT', key, num(math.floor(tonumber(last[2]) / 1000) + 1))
end
return 1
"""
)

_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
return 0
"""

_HOLDING = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. num(now), '+inf')
"""
)

# ARGV: emission interval in whole µs (1 / rate), burst, ahead (µs). GCRA, as in
# celeriac.coordination._rules; every number is a whole µs, exact in a double.
# Returns the wait until the unit's slot in µs (counted if it is at most ahead).
_THROTTLE = (
    _NOW
    + """
local interval, burst, ahead = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat - (burst - 1) * interval
if allow_at - now > ahead then return num(allow_at - now) end
local new = tat + interval
redis.call('SET', KEYS[1], num(new), 'PX', num(math.floor((new - now) / 1000) + 1))
if allow_at < now then allow_at = now end
return num(allow_at - now)
"""
)

_SCRIPTS = {
    "add": _ADD,
    "tally": _TALLY,
    "claim": _CLAIM,
    "acquire": _ACQUIRE,
    "release": _RELEASE,
    "holding": _HOLDING,
    "throttle": _THROTTLE,
}


def _ms(ttl: float | None) -> int:
    """A ttl for ``PEXPIRE``: -1 for none, else milliseconds rounded up (0 stays 0)."""
    return -1 if ttl is None else math.ceil(ttl * 1000)


class RedisCoordinator:
    """A coordinator in Redis (see the module docstring)."""

    def __init__(self, url: str, hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        parsed.ignore("visibility_timeout")  # the same URL often names the broker too
        self.url = url
        self.options = RedisOptions(parsed)
        parsed.finish()
        self.prefix = self.options.prefix
        self._conn = RedisConnection(url, self.options)
        self._scripts: dict[str, AsyncScript] = {}

    def __repr__(self) -> str:
        return f"<RedisCoordinator {self.options.address} prefix={self.prefix!r}>"

    async def connect(self) -> None:
        """Open the connection pool and check that the server answers."""
        await self._conn.open()
        client = self._conn.client
        self._scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}

    async def close(self) -> None:
        """Close the connections."""
        await self._conn.close()

    async def _run(self, script: str, kind: str, key: str, *args: Any) -> Any:
        return await self._conn.run(
            self._call, self._scripts[script], f"{self.prefix}:co:{kind}:{key}", list(args)
        )

    @staticmethod
    async def _call(client: aioredis.Redis, script: AsyncScript, key: str, args: list[Any]) -> Any:
        return await script(keys=[key], args=args, client=client)

    async def time(self) -> float:
        """The server's clock (``TIME``), in unix seconds."""
        seconds, fraction = await self._conn.run(_server_time)
        return seconds + fraction / 1e6

    async def add(self, key: str, delta: int, ttl: float | None) -> int:
        """Add ``delta`` to the counter ``key`` (absent: 0) and return the new value."""
        check_ttl(ttl, optional=True)
        return int(await self._run("add", "n", key, _ms(ttl), int(delta)))

    async def tally(self, key: str, member: str | Sequence[str], ttl: float | None) -> int:
        """Count ``member`` (or each of several) once in the set ``key``; the number of
        distinct members."""
        check_ttl(ttl, optional=True)
        return int(await self._run("tally", "m", key, _ms(ttl), *members_of(member)))

    async def claim(self, key: str, owner: str, ttl: float) -> str:
        """Hold ``key`` for ``owner`` unless another live claim exists; the holder."""
        check_ttl(ttl)
        holder = await self._run("claim", "c", key, _ms(ttl), owner)
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    async def acquire(self, key: str, holder: str, limit: int, ttl: float) -> bool:
        """Take (or renew) one of ``limit`` leased slots of ``key`` for ``holder``."""
        check_ttl(ttl)
        check_limit(limit)
        return bool(await self._run("acquire", "s", key, round(ttl * 1e6), holder, limit))

    async def release(self, key: str, holder: str) -> None:
        """Give back ``holder``'s slot of ``key``, if it holds one."""
        await self._run("release", "s", key, holder)

    async def holding(self, key: str) -> int:
        """Live leases of the semaphore ``key``."""
        return int(await self._run("holding", "s", key))

    async def throttle(self, key: str, rate: float, burst: int, ahead: float = 0.0) -> float:
        """GCRA: the wait until one unit of ``key`` may go; counted if at most ``ahead``."""
        check_rate(rate, burst, ahead)
        wait = await self._run("throttle", "t", key, interval_us(rate), burst, micros(ahead))
        return float(wait) / 1e6


async def _server_time(client: aioredis.Redis) -> tuple[int, int]:
    seconds, micros = await client.time()
    return int(seconds), int(micros)
