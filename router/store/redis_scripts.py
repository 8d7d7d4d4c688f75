"""The Lua scripts of the Redis store (router/store/redis.py), and the keys they keep. Each
reads the time from ``redis.call('TIME')``, so the replicas' clocks never have to agree.

Keys (every one carries the hash tag ``{key_prefix}``, so a deployment's keys live in one
Redis Cluster slot and every script may touch several of them)::

    {p}:breaker:<url>     "open_until_ms openings", PX = open time left + probe grace:
                          present = open (half-open once open_until passed), absent = closed;
                          a writer that dies cannot leave a backend open for ever
    {p}:probe:<url>:<n>   the n-th half-open probe lease, SET NX PX: at most
                          breakers.half_open_probes probes across the whole fleet
    {p}:drained           set of drained backend URLs (an operator's decision: no TTL)
    {p}:load              hash: process id -> "expires_ms|in_flight,pending,long_pending,
                          budget,long_in_flight;..." (one row per backend, no spaces):
                          each process's own load, rewritten every load_publish_ms; fields
                          past their expiry are dropped by readers, so a dead process's
                          share vanishes by itself (a hash field has no TTL of its own
                          before Redis 7.4; the whole hash has one)
    {p}:events            pub/sub channel: "open <url> <ms left> <openings>", "close <url>",
                          "drain <url>", "undrain <url>", and "load <process> <rows>" when
                          a long request starts, produces its first token or ends
                          somewhere (announced at once)
    {p}:rate:<tenant>:r   a key's requests bucket: its GCRA theoretical arrival time in
    {p}:rate:<tenant>:t   microseconds of Redis's clock (tokens: the same); PX = the debt
                          + 1 s, so an idle key's buckets vanish
    {p}:vtc               hash: tenant -> its virtual token counter (fair shares)
"""

from __future__ import annotations

# open a breaker: the latest open-until and the most openings win; the probe leases go
OPEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local openings = tonumber(ARGV[2])
local current = redis.call('GET', KEYS[1])
if current then
  local cu, co = string.match(current, '(%d+) (%d+)')
  if tonumber(cu) > until_ms then until_ms = tonumber(cu) end
  if tonumber(co) > openings then openings = tonumber(co) end
end
local left = until_ms - now
redis.call('SET', KEYS[1], until_ms .. ' ' .. openings, 'PX', math.max(1, left) + tonumber(ARGV[3]))
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('PUBLISH', ARGV[4], 'open ' .. ARGV[5] .. ' ' .. left .. ' ' .. openings)
return {left, openings}
"""

# close a breaker: its key and its probe leases go
CLOSE = """
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('PUBLISH', ARGV[1], 'close ' .. ARGV[2])
return 1
"""

# every breaker key and the drained set, with the server's time
READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
for i = 1, #KEYS - 1 do
  out[#out + 1] = redis.call('GET', KEYS[i]) or ''
end
out[#out + 1] = redis.call('SMEMBERS', KEYS[#KEYS])
return out
"""

# publish this process's load rows; the live rows of the others back, expired ones dropped
LOAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], (now + ttl) .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 4)
if ARGV[5] == '1' then
  redis.call('PUBLISH', ARGV[4], 'load ' .. ARGV[1] .. ' ' .. ARGV[2])
end
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local id, value = all[i], all[i + 1]
  local expires, rows = string.match(value, '^(%d+)|(.*)$')
  if not expires or tonumber(expires) < now then
    redis.call('HDEL', KEYS[1], id)
  elseif id ~= ARGV[1] then
    out[#out + 1] = id
    out[#out + 1] = rows
  end
end
return out
"""


# a request's rate-limit decision (router/core/ratelimit.py ``decide``, the same
# arithmetic in microseconds): both buckets read, checked and written in one step, so N
# replicas admit together what one would. ARGV: requests interval, tokens interval (0: no
# such limit), tolerance, token cost. Returns {allowed, requests debt, tokens debt}.
RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ri, ti = tonumber(ARGV[1]), tonumber(ARGV[2])
local tol, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local rdebt = math.max(0, tonumber(redis.call('GET', KEYS[1]) or now) - now)
local tdebt = math.max(0, tonumber(redis.call('GET', KEYS[2]) or now) - now)
if (ri > 0 and rdebt > tol) or (ti > 0 and tdebt > tol) then
  return {0, rdebt, tdebt}
end
if ri > 0 then
  rdebt = rdebt + ri
  redis.call('SET', KEYS[1], string.format('%.0f', now + rdebt),
             'PX', math.ceil(rdebt / 1000) + 1000)
end
if ti > 0 then
  tdebt = tdebt + cost * ti
  redis.call('SET', KEYS[2], string.format('%.0f', now + tdebt),
             'PX', math.ceil(tdebt / 1000) + 1000)
end
return {1, rdebt, tdebt}
"""

# settle a tokens bucket with the answer's real usage: ARGV[1] microseconds to move it by
# (negative: a refund), never below now
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) + tonumber(ARGV[1])
if tat <= now then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('SET', KEYS[1], string.format('%.0f', tat),
           'PX', math.ceil((tat - now) / 1000) + 1000)
return 1
"""
