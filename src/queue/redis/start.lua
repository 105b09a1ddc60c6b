-- Starts a batch of delivered entries: see START_LUA in scripts.rs for KEYS, ARGV and the reply.
local group = ARGV[1]
local max_attempts = tonumber(ARGV[2])
local now = ARGV[3]
local out = {}
local count = (#ARGV - 6) / 2
-- An entry that will not run: acknowledged and deleted with its image, and `code` reported.
local function drop_entry(entry, image, code)
  redis.call('XACK', KEYS[1], group, entry)
  redis.call('XDEL', KEYS[1], entry)
  drop_image(image, KEYS[3])
  out[#out + 1] = code
  out[#out + 1] = 0
  out[#out + 1] = ''
end
for i = 1, count do
  local entry = ARGV[5 + 2 * i]
  local job = ARGV[6 + 2 * i]
  local hash = KEYS[2 + 2 * i]
  local image = KEYS[3 + 2 * i]
  local status = redis.call('HGET', hash, 'status')
  if (not status) or status == 'completed' or status == 'failed' or status == 'canceled' then
    drop_entry(entry, image, -1)
    -- A record gone (expired) while queued: whoever waits on it learns it is gone, and the jobs
    -- that shared its run end failed rather than wait for a run that will not come.
    if not status then
      redis.call('PUBLISH', KEYS[1] .. ':events', job)
      end_followers(KEYS[1], hash, ARGV[5], 'status', 'failed', 'completed_at_ms', now,
        'error', 'the job whose run this one shared was lost (its record expired or was withdrawn)')
    end
  else
    local attempt = redis.call('HINCRBY', hash, 'attempts', 1)
    local err = nil
    if attempt > max_attempts then
      err = 'gave up after ' .. max_attempts .. ' attempts: the worker stopped during each'
    elseif redis.call('EXISTS', image) == 0 then
      err = 'the image of this job is missing from Redis'
    end
    if err then
      redis.call('HSET', hash, 'status', 'failed', 'error', err, 'attempts', math.min(attempt, max_attempts), 'completed_at_ms', now)
      redis.call('PEXPIRE', hash, ARGV[5])
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*',
        'id', job, 'error', err, 'attempts', max_attempts, 'failed_at_ms', now)
      drop_entry(entry, image, -2)
      ended(KEYS[1], hash, job)
      end_followers(KEYS[1], hash, ARGV[5], 'status', 'failed', 'error', err, 'completed_at_ms', now)
      forget_run(hash, job)
    else
      redis.call('HSET', hash, 'status', 'running', 'started_at_ms', now)
      redis.call('PEXPIRE', hash, ARGV[4])
      redis.call('PUBLISH', KEYS[1] .. ':events', job)
      mirror(KEYS[1], hash, ARGV[4], 'status', 'running', 'started_at_ms', now, 'attempts', attempt)
      out[#out + 1] = attempt
      out[#out + 1] = tonumber(redis.call('HGET', hash, 'created_at_ms') or '0') or 0
      -- The fast answer, for the worker's tier agreement once the accurate one is in.
      out[#out + 1] = redis.call('HGET', hash, 'sync') or ''
    end
  end
end
return out
