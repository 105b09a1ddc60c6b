-- Stores a job's result: see COMPLETE_LUA in scripts.rs for KEYS, ARGV and the reply.
local status = redis.call('HGET', KEYS[2], 'status')
local stored = 0
if status then
  redis.call('HINCRBY', KEYS[2], 'results_reported', 1)
end
if status and status ~= 'completed' and status ~= 'failed' and status ~= 'canceled' then
  redis.call('HSET', KEYS[2], 'status', 'completed', 'result', ARGV[3], 'completed_at_ms', ARGV[4])
  redis.call('HDEL', KEYS[2], 'error')
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  stored = 1
  -- The job hash is `{prefix}:job:{uuid}`: its last part is the job id.
  ended(KEYS[1], KEYS[2], string.match(KEYS[2], '[^:]+$'))
  -- Cached under this worker's model (ARGV[6], '' when it has none), for as long as the serve
  -- that queued the job asked.
  local content = redis.call('HGET', KEYS[2], 'content')
  local cache_ttl = redis.call('HGET', KEYS[2], 'cache_ttl')
  if content and cache_ttl and ARGV[6] ~= '' then
    redis.call('SET', ARGV[6] .. content, ARGV[3], 'PX', cache_ttl)
  end
end
end_followers(KEYS[1], KEYS[2], ARGV[5], 'status', 'completed', 'result', ARGV[3], 'completed_at_ms', ARGV[4],
  'source', 'shared_run')
forget_run(KEYS[2], string.match(KEYS[2], '[^:]+$'))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
drop_image(KEYS[3], KEYS[4])
return stored
