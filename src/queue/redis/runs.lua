-- Prepended to the scripts that move a job other jobs may follow (scripts.rs; see "Shared runs"
-- in keys.rs). A job's hash is `{prefix}:job:{uuid}`; the jobs that share its run are the list
-- `{prefix}:followers:{uuid}`, oldest first; its image is `{prefix}:image:{uuid}`. Needs `ended`
-- before it.
local function followers_key(hash)
  return (string.gsub(hash, ':job:([^:]+)$', ':followers:%1'))
end
-- The key beside `key` for job `id`: the same prefix and kind, the other job's UUID.
local function sibling(key, id)
  return (string.gsub(key, '[^:]+$', id))
end
local function unfinished(status)
  return status and status ~= 'completed' and status ~= 'failed' and status ~= 'canceled'
end
-- The unfinished followers of the job at `hash` take the fields `...` (its new state) and their
-- watchers are told; they, their list and the run's in-flight key live `ttl` ms more, as the
-- job itself does.
local function mirror(stream, hash, ttl, ...)
  local list = followers_key(hash)
  for _, follower in ipairs(redis.call('LRANGE', list, 0, -1)) do
    local fh = sibling(hash, follower)
    if unfinished(redis.call('HGET', fh, 'status')) then
      redis.call('HSET', fh, ...)
      redis.call('PEXPIRE', fh, ttl)
      redis.call('PUBLISH', stream .. ':events', follower)
    end
  end
  redis.call('PEXPIRE', list, ttl)
  local inflight = redis.call('HGET', hash, 'inflight')
  if inflight then redis.call('PEXPIRE', inflight, ttl) end
end
-- The run ended: its unfinished followers end with the fields `...` (a final status), kept for
-- `ttl` ms, each told and its webhook queued like any job that ends.
local function end_followers(stream, hash, ttl, ...)
  local set = followers_key(hash)
  for _, follower in ipairs(redis.call('LRANGE', set, 0, -1)) do
    local fh = sibling(hash, follower)
    if unfinished(redis.call('HGET', fh, 'status')) then
      redis.call('HSET', fh, ...)
      redis.call('HDEL', fh, 'follows')
      redis.call('PEXPIRE', fh, ttl)
      ended(stream, fh, follower)
    end
  end
  redis.call('DEL', set)
end
-- The job at `hash` is no longer the run for its image's bytes.
local function forget_run(hash, job)
  local inflight = redis.call('HGET', hash, 'inflight')
  if inflight and redis.call('GET', inflight) == job then
    redis.call('DEL', inflight)
  end
end
