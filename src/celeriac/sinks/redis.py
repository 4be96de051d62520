"""``redis://host:6379/0``: a data sink (task results) in Redis, with expiry.

Each document is one string key ``P:doc:ID`` (``P`` the URL's ``prefix``) holding
its state and body, written with ``SET ... PX`` so Redis expires it on time (an
expired document is absent at once, and :meth:`RedisSink.store_if_absent` uses
``SET NX``). A batch is one Lua script call whatever its size.

Every batch written also appends one entry to the stream ``P:doc:done`` naming
the ids and states it wrote (trimmed to the last ten seconds). A
:meth:`RedisSink.wait` reads what is there, then blocks in ``XREAD BLOCK`` on that
stream from the entry it had seen. Notifications carry bodies of up to 1 KiB, so a
waiter woken by one has its document at once; for a larger one it reads the key.
A result stored by any process is seen within a round trip, and many results
waited for at once cost one blocked connection.

URL options: those of the Redis broker (:mod:`celeriac.brokers.redis`) except that
``visibility_timeout`` is accepted and ignored, so one URL serves both.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from celeriac.abc import StoredDocument
from celeriac.brokers._hub import Hub
from celeriac.brokers._redis import RedisConnection, RedisOptions
from celeriac.brokers._url import BackendURL

__all__ = ["RedisSink"]

_WINDOW = 10  # seconds of notifications kept in the done stream
_CARRY = 1024  # bodies up to this size travel in the notification itself

# ARGV: prefix, ttl ms (0: none), '1' for NX, documents packed as ``>I2c0Bc0I4c0``
# (id, state, body). The value of a key is ``>Bc0`` (state) followed by the body.
_STORE = f"""
local P, ttl, nx, blob = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4]
local pos, size, note = 1, #blob, {{}}
while pos <= size do
  local id, state, body
  id, state, body, pos = struct.unpack('>I2c0Bc0I4c0', blob, pos)
  local args = {{P .. ':doc:' .. id, struct.pack('>B', #state) .. state .. body}}
  if ttl > 0 then
    args[#args + 1] = 'PX'
    args[#args + 1] = ttl
  end
  if nx then args[#args + 1] = 'NX' end
  if redis.call('SET', unpack(args)) then
    local carried = ''
    if #body <= {_CARRY} then carried = body end
    note[#note + 1] = struct.pack('>I2c0Bc0B', #id, id, #state, state, #carried > 0 and 1 or 0)
    if #carried > 0 then note[#note + 1] = struct.pack('>I4', #carried) .. carried end
  end
end
if #note > 0 then
  local t = redis.call('TIME')
  local horizon = (tonumber(t[1]) - {_WINDOW}) * 1000
  redis.call('XADD', P .. ':doc:done', 'MINID', '~', horizon, '*', 'n', table.concat(note))
end
return 0
"""

# ARGV: prefix, k, k wanted states (k = 0: any), ids packed as ``>I2c0``. Returns the
# done stream's last entry id and the documents found, packed as ``>I2c0I4c0`` (id, value).
_READ = """
local P, k = ARGV[1], tonumber(ARGV[2])
local states = nil
if k > 0 then
  states = {}
  for i = 3, 2 + k do states[ARGV[i]] = true end
end
local blob, pos, ids = ARGV[3 + k], 1, {}
while pos <= #blob do
  ids[#ids + 1], pos = struct.unpack('>I2c0', blob, pos)
end
local last = redis.call('XREVRANGE', P .. ':doc:done', '+', '-', 'COUNT', 1)
local out = {}
for c = 1, #ids, 1000 do
  local keys = {}
  for i = c, math.min(c + 999, #ids) do keys[#keys + 1] = P .. ':doc:' .. ids[i] end
  local values = redis.call('MGET', unpack(keys))
  for j = 1, #keys do
    local v = values[j]
    if v and (states == nil or states[string.sub(v, 2, 1 + string.byte(v, 1))]) then
      local id = ids[c + j - 1]
      out[#out + 1] = struct.pack('>I2', #id) .. id .. struct.pack('>I4', #v) .. v
    end
  end
end
return {(#last > 0) and last[1][1] or '0-0', table.concat(out)}
"""

_U8, _U16, _U32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I")


def _pack(doc: StoredDocument) -> bytes:
    id, state = doc.id.encode(), doc.state.encode()
    return b"".join(
        (_U16.pack(len(id)), id, _U8.pack(len(state)), state, _U32.pack(len(doc.body)), doc.body)
    )


def _found(blob: bytes) -> dict[str, StoredDocument]:
    found: dict[str, StoredDocument] = {}
    pos, end = 0, len(blob)
    while pos < end:
        (n,) = _U16.unpack_from(blob, pos)
        id = blob[pos + 2 : pos + 2 + n].decode()
        pos += 2 + n
        (size,) = _U32.unpack_from(blob, pos)
        value = blob[pos + 4 : pos + 4 + size]
        pos += 4 + size
        state_end = 1 + value[0]
        found[id] = StoredDocument(id, value[1:state_end].decode(), value[state_end:])
    return found


def _noted(blob: bytes) -> list[tuple[str, str, bytes | None]]:
    """The (id, state, body or None) a notification names; small bodies travel in it."""
    noted: list[tuple[str, str, bytes | None]] = []
    pos, end = 0, len(blob)
    while pos < end:
        (n,) = _U16.unpack_from(blob, pos)
        id = blob[pos + 2 : pos + 2 + n].decode()
        pos += 2 + n
        size = blob[pos]
        state = blob[pos + 1 : pos + 1 + size].decode()
        pos += 1 + size
        body: bytes | None = None
        if blob[pos]:
            (length,) = _U32.unpack_from(blob, pos + 1)
            body = blob[pos + 5 : pos + 5 + length]
            pos += 4 + length
        pos += 1
        noted.append((id, state, body))
    return noted


class RedisSink:
    """A data sink in Redis (see the module docstring)."""

    def __init__(self, url: str, hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        parsed.ignore("visibility_timeout")  # the same URL often names the broker too
        self.url = url
        self.options = RedisOptions(parsed)
        parsed.finish()
        self.prefix = self.options.prefix
        self._conn = RedisConnection(url, self.options)
        self._store: AsyncScript | None = None
        self._read: AsyncScript | None = None

    def __repr__(self) -> str:
        return f"<RedisSink {self.options.address} prefix={self.prefix!r}>"

    async def connect(self) -> None:
        """Open the connection pool and check that the server answers."""
        await self._conn.open()
        self._store = self._conn.client.register_script(_STORE)
        self._read = self._conn.client.register_script(_READ)

    async def close(self) -> None:
        """Close the connections."""
        await self._conn.close()

    async def store(self, documents: Sequence[StoredDocument], ttl: float | None) -> None:
        """Upsert ``documents``, each expiring after ``ttl`` seconds (``None``: never)."""
        await self._write(documents, ttl, nx=False)

    async def store_if_absent(self, documents: Sequence[StoredDocument], ttl: float | None) -> None:
        """Write each document only where no live document has its id (``SET NX``)."""
        await self._write(documents, ttl, nx=True)

    async def _write(
        self, documents: Sequence[StoredDocument], ttl: float | None, *, nx: bool
    ) -> None:
        ms = 0 if ttl is None else max(1, int(ttl * 1000))
        for start in range(0, len(documents), 1000):
            blob = b"".join(map(_pack, documents[start : start + 1000]))
            await self._conn.run(self._call, self._store, [ms, "1" if nx else "0", blob])

    async def _call(self, client: aioredis.Redis, script: AsyncScript, args: list[Any]) -> Any:
        return await script(args=[self.prefix, *args], client=client)

    async def _lookup(
        self, ids: Sequence[str], states: frozenset[str] | None
    ) -> tuple[bytes, dict[str, StoredDocument]]:
        wanted = sorted(states) if states is not None else []
        packed = b"".join(_U16.pack(len(raw)) + raw for raw in (i.encode() for i in ids))
        cursor, blob = await self._conn.run(self._call, self._read, [len(wanted), *wanted, packed])
        return cursor, _found(blob)

    async def get(self, ids: Sequence[str]) -> dict[str, StoredDocument]:
        """The live documents among ``ids``."""
        keys = list(dict.fromkeys(ids))
        return (await self._lookup(keys, None))[1] if keys else {}

    async def wait(
        self, ids: Sequence[str], timeout: float, states: frozenset[str]
    ) -> dict[str, StoredDocument]:
        """Documents among ``ids`` in ``states``, as soon as there is one (or at timeout)."""
        keys = list(dict.fromkeys(ids))
        if not keys or not states:  # nothing can match: wait as asked, for nothing
            await anyio.sleep(timeout)
            return {}
        cursor, found = await self._lookup(keys, states)
        wanted = set(keys)
        deadline = time.monotonic() + timeout
        while not found and (left := deadline - time.monotonic()) > 0:
            block = min(left, self.options.socket_timeout / 2, _WINDOW / 2)
            cursor, hits = await self._conn.run(self._next, cursor, block, wanted, states)
            missing = []
            for id, state, body in hits:
                if body is None:
                    missing.append(id)
                else:
                    found[id] = StoredDocument(id, state, body)
            if missing:
                found.update((await self._lookup(missing, states))[1])
        return found

    async def _next(
        self,
        client: aioredis.Redis,
        cursor: bytes,
        block: float,
        wanted: set[str],
        states: frozenset[str],
    ) -> tuple[bytes, list[tuple[str, str, bytes | None]]]:
        """Block for the next notifications; the new cursor and those naming ``wanted``."""
        key = f"{self.prefix}:doc:done"
        reply: Any = await client.xread({key: cursor}, count=100, block=max(1, int(block * 1000)))
        hits: list[tuple[str, str, bytes | None]] = []
        for _, entries in reply or ():
            for entry, fields in entries:
                cursor = entry
                hits += [
                    hit
                    for hit in _noted(fields.get(b"n", b""))
                    if hit[0] in wanted and hit[1] in states
                ]
        return cursor, hits

    async def forget(self, ids: Sequence[str]) -> None:
        """Delete these documents."""
        keys = [f"{self.prefix}:doc:{i}" for i in dict.fromkeys(ids)]
        for start in range(0, len(keys), 1000):
            await self._conn.run(_delete, keys[start : start + 1000])


async def _delete(client: aioredis.Redis, keys: list[str]) -> None:
    await client.delete(*keys)
