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
-- With the cache on (ARGV[9], the bytes' hash): a result cached for them under the model the
-- workers announced (KEYS[6]) completes the job now, with it (returned); checked here, in the
-- same step as the queueing, so a run that ends while this request waited is never run again.
if ARGV[9] ~= '' then
  local identity = redis.call('GET', KEYS[6])
  local cached = identity and redis.call('GET', ARGV[11] .. identity .. ':' .. ARGV[9])
  -- An entry that is not JSON (written by hand, or damaged) is a miss, not a job it would break.
  if cached and not pcall(cjson.decode, cached) then cached = false end
  if cached then
    redis.call('UNLINK', KEYS[3])
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[2], 'status', 'completed', 'sync', ARGV[4], 'result', cached, 'attempts', 0,
      'created_at_ms', ARGV[5], 'completed_at_ms', math.floor(tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000),
      'source', 'cache')
    if ARGV[8] ~= '' then redis.call('HSET', KEYS[2], 'callback', ARGV[8]) end
    redis.call('PEXPIRE', KEYS[2], ARGV[12])
    ended(KEYS[1], KEYS[2], ARGV[3])
    return cached
  end
end
-- The same bytes already queued or running: this job follows that run (runs.lua) instead of
-- queueing its own, and holds no image; up to ARGV[13] followers per run (past that, its own
-- run, within the queue's bounds), so one popular image cannot make a script's loop unbounded.
if ARGV[9] ~= '' then
  local leader = redis.call('GET', KEYS[5])
  local leader_hash = leader and sibling(KEYS[2], leader)
  local leader_status = leader_hash and redis.call('HGET', leader_hash, 'status')
  if unfinished(leader_status) and redis.call('LLEN', followers_key(leader_hash)) < tonumber(ARGV[13]) then
    redis.call('UNLINK', KEYS[3])
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[2], 'status', leader_status, 'sync', ARGV[4], 'created_at_ms', ARGV[5],
      'attempts', redis.call('HGET', leader_hash, 'attempts') or 0, 'follows', leader)
    local started = redis.call('HGET', leader_hash, 'started_at_ms')
    if started then redis.call('HSET', KEYS[2], 'started_at_ms', started) end
    if ARGV[8] ~= '' then redis.call('HSET', KEYS[2], 'callback', ARGV[8]) end
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
    local list = followers_key(leader_hash)
    redis.call('RPUSH', list, ARGV[3])
    redis.call('PEXPIRE', list, ARGV[2])
    return 3
  end
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
-- With the cache on: the run for these bytes (KEYS[5]), and what its result is cached by.
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[2], 'content', ARGV[9], 'cache_ttl', ARGV[10], 'inflight', KEYS[5])
  redis.call('SET', KEYS[5], ARGV[3], 'PX', ARGV[2])
end
return 1
