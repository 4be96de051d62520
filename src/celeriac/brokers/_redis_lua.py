"""The Lua scripts of the Redis broker: each operation is one atomic script call.

Keys, under the URL's ``prefix`` ``P`` (a queue ``Q``, a priority ``N`` in 0-9)::

    P:q:Q:N            stream of ready messages; fields i (id), b (body), d (earlier deliveries)
    P:q:Q:N:lease      zset: entry id -> lease deadline (ms); every pending entry has one
    P:q:Q:delayed      zset: token -> eta (ms);  P:q:Q:delayed:msg  hash: token -> message
    P:q:Q:signal       stream of one entry, renewed when Q may have something new
    P:queues           set of queue names;  P:seq  counter
    P:revoked          zset: message id -> expiry (ms);  P:revoked:log  stream of revocations
    P:dead             hash: message id -> dead letter;  P:dead:order  zset: id -> sequence
    P:workers          zset: name -> expiry (ms);  P:workers:info  hash: name -> WorkerInfo JSON

Every stream has the consumer group ``celeriac`` (made at id 0 when missing, so
nothing added before is skipped). Time is the server's ``TIME`` in milliseconds,
so clients' clocks do not matter for leases. Messages travel in and out packed
with Lua's ``struct`` (lengths, then bytes): one bulk string per batch instead of
several RESP elements per message, which keeps the Python side cheap.

Formats (``struct``, big-endian; strings are a length then the bytes):

* message in:  ``>BdI2c0I2c0I4c0`` priority, eta ms (0: now), queue, id, body
* reference:   ``>I2c0BBc0I4``     queue, priority, entry id, delivery count in the group
* handed out:  ``>HBI4BI2I4`` queue index, priority, deliveries, then the lengths
  and bytes of the reference (the delivery's receipt), id and body
* dead letter: ``>BI4dI2c0I4c0I4c0`` priority, deliveries, at (s), queue, reason, body
"""

from __future__ import annotations

__all__ = [
    "ACK",
    "DEAD_LETTER",
    "DEAD_LETTERS",
    "EXTEND",
    "FETCH",
    "HEARTBEAT",
    "NACK",
    "PUBLISH",
    "PURGE",
    "PURGE_DEAD",
    "REPLAY",
    "REVOKE",
    "REVOKED_SINCE",
    "STATS",
    "TIDY",
    "UNCLAIM",
    "WORKERS",
]

_PRELUDE = """
local P = ARGV[1]
local G = 'celeriac'
local REF = '>I2c0BBc0I4'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function qkey(q) return P .. ':q:' .. q end
local function stream(q, p) return P .. ':q:' .. q .. ':' .. p end
local touched = {}
local function touch(q)
  if touched[q] == nil then
    touched[q] = true
    redis.call('SADD', P .. ':queues', q)
    redis.call('XADD', qkey(q) .. ':signal', 'MAXLEN', 1, '*', 's', '')
  end
end
local function add(q, p, id, body, d)
  if d > 0 then
    redis.call('XADD', stream(q, p), '*', 'i', id, 'b', body, 'd', d)
  else
    redis.call('XADD', stream(q, p), '*', 'i', id, 'b', body)
  end
  touch(q)
end
local function delay(q, eta, p, d, id, body)
  local dz = qkey(q) .. ':delayed'
  local token = string.format('%016x', redis.call('INCR', P .. ':seq'))
  redis.call('HSET', dz .. ':msg', token, struct.pack('>BI4I2c0I4c0', p, d, #id, id, #body, body))
  redis.call('ZADD', dz, math.floor(eta), token)
  touch(q)
end
local function promote(q, now)
  local dz = qkey(q) .. ':delayed'
  local due = redis.call('ZRANGEBYSCORE', dz, '-inf', now, 'LIMIT', 0, 1000)
  if #due == 0 then return end
  local dh = dz .. ':msg'
  for _, token in ipairs(due) do
    local packed = redis.call('HGET', dh, token)
    if packed then
      local p, d, id, body = struct.unpack('>BI4I2c0I4c0', packed)
      add(q, p, id, body, d)
    end
  end
  redis.call('ZREM', dz, unpack(due))
  redis.call('HDEL', dh, unpack(due))
end
local function pending(s, eid)
  local r = redis.pcall('XPENDING', s, G, eid, eid, 1)
  if r.err or #r == 0 then return nil end
  return r[1][4]
end
local function finish(s, eids)
  redis.pcall('XACK', s, G, unpack(eids))
  redis.call('XDEL', s, unpack(eids))
  redis.call('ZREM', s .. ':lease', unpack(eids))
end
"""

PUBLISH = (
    _PRELUDE
    + """
local blob, pos, now = ARGV[2], 1, now_ms()
local size = #blob
while pos <= size do
  local p, eta, q, id, body
  p, eta, q, id, body, pos = struct.unpack('>BdI2c0I2c0I4c0', blob, pos)
  if eta > now then delay(q, eta, p, 0, id, body) else add(q, p, id, body, 0) end
end
return 0
"""
)

FETCH = (
    _PRELUDE
    + """
local consumer, vt, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local queues = {}
for i = 5, #ARGV do queues[#queues + 1] = ARGV[i] end
for _, q in ipairs(queues) do promote(q, now) end
local revoked = P .. ':revoked'
local check = redis.call('ZCARD', revoked) > 0
local out, n, leases = {}, 0, {}
local function take(qi, q, p, s, e, count)
  local eid, f = e[1], e[2]
  local id, body, d
  if f[1] == 'i' and f[3] == 'b' then  -- as we write them: i, b and maybe d
    id, body, d = f[2], f[4], tonumber(f[6] or 0)
  else
    id, body, d = eid, '', 0
    for k = 1, #f, 2 do
      if f[k] == 'i' then id = f[k + 1]
      elseif f[k] == 'b' then body = f[k + 1]
      elseif f[k] == 'd' then d = tonumber(f[k + 1]) end
    end
  end
  if check then
    local until_ = redis.call('ZSCORE', revoked, id)
    if until_ and tonumber(until_) > now then
      finish(s, {eid})
      return
    end
  end
  leases[#leases + 1] = now + vt
  leases[#leases + 1] = eid
  local ref = struct.pack(REF, #q, q, p, #eid, eid, count)
  out[#out + 1] = struct.pack('>HBI4BI2I4', qi, p, d + count, #ref, #id, #body)
  out[#out + 1] = ref
  out[#out + 1] = id
  out[#out + 1] = body
  n = n + 1
end
local function lease(lz)
  if #leases > 0 then
    redis.call('ZADD', lz, unpack(leases))
    leases = {}
  end
end
local function older(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  if am ~= bm then return tonumber(am) < tonumber(bm) end
  return tonumber(as) < tonumber(bs)
end
for p = 9, 0, -1 do
  for qi, q in ipairs(queues) do
    if n >= limit then break end
    local s = stream(q, p)
    if redis.call('EXISTS', s) == 1 then
      local lz = s .. ':lease'
      local due = redis.call('ZRANGEBYSCORE', lz, '-inf', now, 'LIMIT', 0, limit - n)
      if #due > 0 then
        table.sort(due, older)
        local got = {}
        for _, e in ipairs(redis.call('XCLAIM', s, G, consumer, 0, unpack(due))) do
          got[e[1]] = true
          take(qi, q, p, s, e, pending(s, e[1]) or 1)
        end
        lease(lz)
        for _, eid in ipairs(due) do
          if not got[eid] then redis.call('ZREM', lz, eid) end
        end
      end
      while n < limit do
        local want = limit - n
        local r = redis.pcall('XREADGROUP', 'GROUP', G, consumer, 'COUNT', want, 'STREAMS', s, '>')
        if type(r) == 'table' and r.err then
          if not string.find(r.err, 'NOGROUP') then return redis.error_reply(r.err) end
          redis.call('XGROUP', 'CREATE', s, G, '0')
          r = redis.call('XREADGROUP', 'GROUP', G, consumer, 'COUNT', want, 'STREAMS', s, '>')
        end
        if not r then break end
        local entries = r[1][2]
        for _, e in ipairs(entries) do take(qi, q, p, s, e, 1) end
        lease(lz)
        if #entries < want then break end
      end
    end
  end
end
-- Full batch: more may be waiting, the caller fetches again at once.
if n >= limit then return table.concat(out) end
-- Drained: what to wait for next (ms until the first eta or lease deadline, -1
-- for none, then each queue's signal entry), after the messages if any.
local wake = nil
local reply = {-1}
if n > 0 then reply = {table.concat(out), -1} end
local base = #reply - 1
for i, q in ipairs(queues) do
  local keys = {qkey(q) .. ':delayed'}
  for p = 0, 9 do keys[#keys + 1] = stream(q, p) .. ':lease' end
  for _, k in ipairs(keys) do
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    if #first > 0 and (wake == nil or tonumber(first[2]) < wake) then wake = tonumber(first[2]) end
  end
  local last = redis.call('XREVRANGE', qkey(q) .. ':signal', '+', '-', 'COUNT', 1)
  reply[base + i + 1] = (#last > 0) and last[1][1] or '0-0'
end
if wake then reply[base + 1] = math.max(0, wake - now) end
return reply
"""
)

_EACH_REF = """
local blob, pos = ARGV[%d], 1
local size = #blob
while pos <= size do
  local q, p, eid, count
  q, p, eid, count, pos = struct.unpack(REF, blob, pos)
  local s = stream(q, p)
"""

ACK = (
    _PRELUDE
    + """
local groups, order = {}, {}
"""
    + _EACH_REF % 2
    + """
  if groups[s] == nil then
    groups[s] = {}
    order[#order + 1] = s
  end
  table.insert(groups[s], eid)
end
for _, s in ipairs(order) do finish(s, groups[s]) end
return 0
"""
)

EXTEND = (
    _PRELUDE
    + """
local until_ = now_ms() + tonumber(ARGV[2])
"""
    + _EACH_REF % 3
    + """
  if pending(s, eid) == count then redis.call('ZADD', s .. ':lease', 'XX', until_, eid) end
end
return 0
"""
)

UNCLAIM = (
    _PRELUDE
    + _EACH_REF % 3
    + """
  if pending(s, eid) == count then
    redis.call('XCLAIM', s, G, ARGV[2], 0, eid, 'RETRYCOUNT', count - 1, 'JUSTID')
    redis.call('ZADD', s .. ':lease', 0, eid)
    touch(q)
  end
end
return 0
"""
)

# ARGV[3]: references, each followed by ``>I2c0I4c0I4``: id, body, deliveries.
NACK = (
    _PRELUDE
    + """
local now, ms = now_ms(), tonumber(ARGV[2])
"""
    + _EACH_REF % 3
    + """
  local id, body, deliveries
  id, body, deliveries, pos = struct.unpack('>I2c0I4c0I4', blob, pos)
  if pending(s, eid) == count then
    if ms > 0 then
      finish(s, {eid})
      delay(q, now + ms, p, deliveries, id, body)
    else
      redis.call('ZADD', s .. ':lease', 0, eid)
      touch(q)
    end
  end
end
return 0
"""
)

DEAD_LETTER = (
    _PRELUDE
    + """
local now, reason = now_ms(), ARGV[2]
"""
    + _EACH_REF % 3
    + """
  local id, body, deliveries
  id, body, deliveries, pos = struct.unpack('>I2c0I4c0I4', blob, pos)
  finish(s, {eid})
  redis.call('HSET', P .. ':dead', id, struct.pack('>BI4dI2c0I4c0I4c0',
    p, deliveries, now / 1000, #q, q, #reason, reason, #body, body))
  redis.call('ZADD', P .. ':dead:order', redis.call('INCR', P .. ':seq'), id)
end
return 0
"""
)

DEAD_LETTERS = (
    _PRELUDE
    + """
local ids = redis.call('ZREVRANGE', P .. ':dead:order', 0, tonumber(ARGV[2]) - 1)
if #ids == 0 then return {} end
local out = {}
for c = 1, #ids, 1000 do  -- unpack() takes a few thousand values at most
  local part = {}
  for i = c, math.min(c + 999, #ids) do part[#part + 1] = ids[i] end
  local values = redis.call('HMGET', P .. ':dead', unpack(part))
  for i, id in ipairs(part) do
    if values[i] then
      out[#out + 1] = id
      out[#out + 1] = values[i]
    end
  end
end
return out
"""
)

REPLAY = (
    _PRELUDE
    + """
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local packed = redis.call('HGET', P .. ':dead', id)
  if packed then
    local p, _, _, q, _, body = struct.unpack('>BI4dI2c0I4c0I4c0', packed)
    add(q, p, id, body, 0)
    redis.call('HDEL', P .. ':dead', id)
    redis.call('ZREM', P .. ':dead:order', id)
    n = n + 1
  end
end
return n
"""
)

PURGE_DEAD = (
    _PRELUDE
    + """
local n = redis.call('HLEN', P .. ':dead')
redis.call('DEL', P .. ':dead', P .. ':dead:order')
return n
"""
)

REVOKE = (
    _PRELUDE
    + """
local now = now_ms()
local until_ = now + tonumber(ARGV[2])
local z, log = P .. ':revoked', P .. ':revoked:log'
redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
for i = 3, #ARGV do
  redis.call('ZADD', z, until_, ARGV[i])
  redis.call('XADD', log, '*', 'i', ARGV[i], 'u', until_)
end
for _, e in ipairs(redis.call('XRANGE', log, '-', '+', 'COUNT', 100)) do
  if tonumber(e[2][4]) > now then break end
  redis.call('XDEL', log, e[1])
end
return 0
"""
)

REVOKED_SINCE = (
    _PRELUDE
    + """
local now, cursor = now_ms(), ARGV[2]
local start = (cursor == '') and '-' or ('(' .. cursor)
local ids, last = {}, (cursor == '') and '0-0' or cursor
for _, e in ipairs(redis.call('XRANGE', P .. ':revoked:log', start, '+', 'COUNT', 10000)) do
  last = e[1]
  if tonumber(e[2][4]) > now then ids[#ids + 1] = e[2][2] end
end
return {last, ids}
"""
)

STATS = (
    _PRELUDE
    + """
local now = now_ms()
local out = {}
for _, q in ipairs(redis.call('SMEMBERS', P .. ':queues')) do
  local dz = qkey(q) .. ':delayed'
  local ready = redis.call('ZCOUNT', dz, '-inf', now)
  local delayed = redis.call('ZCOUNT', dz, '(' .. now, '+inf')
  local flying = 0
  for p = 0, 9 do
    local s = stream(q, p)
    local len = redis.call('XLEN', s)
    if len > 0 then
      local leased = redis.call('ZCARD', s .. ':lease')
      local expired = redis.call('ZCOUNT', s .. ':lease', '-inf', now)
      ready = ready + len - leased + expired
      flying = flying + leased - expired
    end
  end
  out[#out + 1] = q
  out[#out + 1] = ready
  out[#out + 1] = delayed
  out[#out + 1] = flying
end
return out
"""
)

PURGE = (
    _PRELUDE
    + """
local now, q = now_ms(), ARGV[2]
local dz = qkey(q) .. ':delayed'
local n = redis.call('ZCARD', dz)
redis.call('DEL', dz, dz .. ':msg')
for p = 0, 9 do
  local s = stream(q, p)
  if redis.call('EXISTS', s) == 1 then
    local lz = s .. ':lease'
    while true do
      local expired = redis.call('ZRANGEBYSCORE', lz, '-inf', now, 'LIMIT', 0, 1000)
      if #expired == 0 then break end
      finish(s, expired)
      n = n + #expired
    end
    if redis.call('ZCARD', lz) == 0 then
      n = n + redis.call('XLEN', s)
      redis.call('DEL', s)
    else
      local start = '-'
      local groups = redis.pcall('XINFO', 'GROUPS', s)
      if not groups.err then
        for _, g in ipairs(groups) do
          local info = {}
          for k = 1, #g, 2 do info[g[k]] = g[k + 1] end
          if info['name'] == G then start = '(' .. info['last-delivered-id'] end
        end
      end
      while true do
        local entries = redis.call('XRANGE', s, start, '+', 'COUNT', 1000)
        if #entries == 0 then break end
        local eids = {}
        for i, e in ipairs(entries) do eids[i] = e[1] end
        redis.call('XDEL', s, unpack(eids))
        n = n + #eids
        start = '(' .. eids[#eids]
      end
    end
  end
end
return n
"""
)

HEARTBEAT = (
    _PRELUDE
    + """
local z, h, now = P .. ':workers', P .. ':workers:info', now_ms()
local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('ZREM', z, unpack(gone))
  redis.call('HDEL', h, unpack(gone))
end
redis.call('ZADD', z, now + tonumber(ARGV[3]), ARGV[2])
redis.call('HSET', h, ARGV[2], ARGV[4])
return 0
"""
)

# ARGV[2]: a name to forget now, or ''.
WORKERS = (
    _PRELUDE
    + """
local z, h = P .. ':workers', P .. ':workers:info'
local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now_ms())
if ARGV[2] ~= '' then gone[#gone + 1] = ARGV[2] end
if #gone > 0 then
  redis.call('ZREM', z, unpack(gone))
  redis.call('HDEL', h, unpack(gone))
end
if ARGV[2] ~= '' then return {} end
local names = redis.call('ZRANGE', z, 0, -1)
if #names == 0 then return {} end
return redis.call('HMGET', h, unpack(names))
"""
)

# Drop consumers that hold nothing and have been idle longer than ARGV[3] ms (and
# ARGV[2], this instance's own consumer, if it holds nothing).
TIDY = (
    _PRELUDE
    + """
local mine, idle = ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV do
  for p = 0, 9 do
    local s = stream(ARGV[i], p)
    local consumers = redis.pcall('XINFO', 'CONSUMERS', s, G)
    if not consumers.err then
      for _, c in ipairs(consumers) do
        local info = {}
        for k = 1, #c, 2 do info[c[k]] = c[k + 1] end
        if info['pending'] == 0 and (info['name'] == mine or info['idle'] > idle) then
          redis.call('XGROUP', 'DELCONSUMER', s, G, info['name'])
        end
      end
    end
  end
end
return 0
"""
)
