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
redis.call('HSET', KEYS[2], 'status', 'canceled', 'completed_at_ms', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
drop_image(KEYS[3], KEYS[4])
ended(KEYS[1], KEYS[2], ARGV[4])
return 'queued'
