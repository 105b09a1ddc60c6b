-- Queues a job whose image is staged: see ENQUEUE_LUA in scripts.rs for KEYS, ARGV and replies.
-- The fence first (enqueue.rs, "Enqueue outcome"): run at or after the deadline ARGV[7] (ms, Redis'
-- clock), the caller has given up, so nothing is queued. The image was never counted in KEYS[4]
-- (only a queued one is), so it is deleted outright.
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) >= tonumber(ARGV[7]) then
  redis.call('UNLINK', KEYS[3])
  return -2
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  return -1
end
local queued = redis.call('XLEN', KEYS[1])
if queued >= tonumber(ARGV[1]) then
  redis.call('UNLINK', KEYS[3])
  return 0
end
-- KEYS[4] is the bytes of the images of all queued jobs (a missing key is 0): counted here,
-- given back by whichever script deletes a queued job's image. With no job queued it must be
-- 0, so any drift (an image deleted by hand or evicted) ends whenever the queue drains.
local size = redis.call('STRLEN', KEYS[3])
local held = 0
if queued > 0 then
  held = tonumber(redis.call('GET', KEYS[4]) or '0') or 0
else
  redis.call('DEL', KEYS[4])
end
if held + size > tonumber(ARGV[6]) then
  redis.call('UNLINK', KEYS[3])
  return 2
end
redis.call('INCRBY', KEYS[4], size)
redis.call('PERSIST', KEYS[3])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'status', 'queued', 'sync', ARGV[4], 'attempts', 0, 'created_at_ms', ARGV[5])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[2], 'callback', ARGV[8]) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
-- The entry's id is kept in the record, so a cancel can take the entry out of the stream.
redis.call('HSET', KEYS[2], 'entry', redis.call('XADD', KEYS[1], '*', 'id', ARGV[3]))
return 1
