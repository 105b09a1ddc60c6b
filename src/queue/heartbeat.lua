-- A worker says it is alive: its member in the workers sorted set is scored with the time until
-- which it counts as live, on Redis' own clock (so the machines' clocks do not matter).
-- KEYS[1]: the workers sorted set.
-- ARGV[1]: the worker's consumer name, ARGV[2]: how long this heartbeat counts (ms),
-- ARGV[3]: expiry of the whole set (ms), longer than any heartbeat counts.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%.0f', now_ms + tonumber(ARGV[2])), ARGV[1])
-- Workers that stopped without saying so (kill -9, a lost machine) drop out here.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now_ms))
-- The set goes away by itself once the last worker has stopped.
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
