-- Cancels a job no worker has started: see WITHDRAW_LUA in scripts.rs for KEYS, ARGV and the reply.
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return '' end
if status ~= 'queued' then return status end
-- Its entry leaves the stream now (acknowledged too, in case a worker has read it and not yet
-- started it: START then finds the job canceled and drops the entry).
local entry = redis.call('HGET', KEYS[2], 'entry')
if entry then
  redis.call('XACK', KEYS[1], ARGV[1], entry)
  redis.call('XDEL', KEYS[1], entry)
end
-- Jobs that share its run: the first one still waiting takes the run over (a new entry, at the
-- stream's back; the image, its count and the other followers move to it), so none is left
-- without a run.
local heir = nil
local set = followers_key(KEYS[2])
for _, follower in ipairs(redis.call('LRANGE', set, 0, -1)) do
  if heir == nil and redis.call('HGET', sibling(KEYS[2], follower), 'status') == 'queued' then
    heir = follower
  end
end
if entry and heir then
  local heir_hash = sibling(KEYS[2], heir)
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('RENAME', KEYS[3], sibling(KEYS[3], heir)) end
  redis.call('LREM', set, 0, heir)
  if redis.call('LLEN', set) > 0 then
    redis.call('RENAME', set, followers_key(heir_hash))
    redis.call('PEXPIRE', followers_key(heir_hash), ARGV[5])
  end
  local fields = redis.call('HMGET', KEYS[2], 'content', 'cache_ttl', 'inflight')
  redis.call('HDEL', heir_hash, 'follows')
  redis.call('HSET', heir_hash, 'entry', redis.call('XADD', KEYS[1], '*', 'id', heir))
  if fields[1] then
    redis.call('HSET', heir_hash, 'content', fields[1], 'cache_ttl', fields[2], 'inflight', fields[3])
    redis.call('SET', fields[3], heir, 'PX', ARGV[5])
  end
  redis.call('PEXPIRE', heir_hash, ARGV[5])
  redis.call('HDEL', KEYS[2], 'inflight')
else
  drop_image(KEYS[3], KEYS[4])
  forget_run(KEYS[2], ARGV[4])
end
redis.call('HSET', KEYS[2], 'status', 'canceled', 'completed_at_ms', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
ended(KEYS[1], KEYS[2], ARGV[4])
return 'queued'
