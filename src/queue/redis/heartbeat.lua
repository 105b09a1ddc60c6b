-- A worker says it is alive: its member in the workers sorted set is scored with the time until
-- which it counts as live, on Redis' own clock (so the machines' clocks do not matter). And it
-- renews the lease of each job it is running.
-- KEYS[1]: the workers sorted set, KEYS[2]: the jobs stream.
-- ARGV[1]: the worker's consumer name, ARGV[2]: how long this heartbeat counts (ms),
-- ARGV[3]: expiry of the whole set (ms), longer than any heartbeat counts, ARGV[4]: the consumer
-- group, ARGV[5...]: the stream entries of the jobs this worker is running.
-- Returns those of the entries that another worker has taken over.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%.0f', now_ms + tonumber(ARGV[2])), ARGV[1])
-- Workers that stopped without saying so (kill -9, a lost machine) drop out here.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now_ms))
-- The set goes away by itself once the last worker has stopped.
redis.call('PEXPIRE', KEYS[1], ARGV[3])
-- The lease: a pending entry's idle time, reset here, which XAUTOCLAIM waits out
-- (reclaim_after) before it takes a job over. Only entries still pending to this worker: one
-- taken over meanwhile (this worker was cut off from Redis) stays with its new worker, and is
-- returned; one no longer pending at all has just been finished, and is passed over.
local lost = {}
for i = 5, #ARGV do
  local entry = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[2], ARGV[4], entry, entry, 1)
  if #pending > 0 then
    if pending[1][2] == ARGV[1] then
      redis.call('XCLAIM', KEYS[2], ARGV[4], ARGV[1], 0, entry, 'JUSTID')
    else
      lost[#lost + 1] = entry
    end
  end
end
return lost
