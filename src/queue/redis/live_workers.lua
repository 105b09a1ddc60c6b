-- How many workers' heartbeats have not run out yet, on Redis' own clock.
-- KEYS[1]: the workers sorted set (member: consumer name, score: live until, ms).
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.0f', now_ms), '+inf')
