-- Records a failed attempt: see FAIL_LUA in scripts.rs for KEYS, ARGV and the reply.
local status = redis.call('HGET', KEYS[2], 'status')
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 0 then
  if status == 'failed' then return 3 end
  return 0
end
if (not status) or status == 'completed' or status == 'failed' or status == 'canceled' then
  redis.call('XDEL', KEYS[1], ARGV[2])
  drop_image(KEYS[4], KEYS[5])
  if status == 'failed' then return 3 end
  return 0
end
if tonumber(ARGV[3]) < tonumber(ARGV[4]) then
  local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
  if #found > 0 then
    local entry = redis.call('XADD', KEYS[1], '*', unpack(found[1][2]))
    redis.call('XDEL', KEYS[1], ARGV[2])
    redis.call('HSET', KEYS[2], 'status', 'queued', 'error', ARGV[5], 'entry', entry)
    redis.call('PEXPIRE', KEYS[2], ARGV[8])
    redis.call('PUBLISH', KEYS[1] .. ':events', ARGV[9])
    mirror(KEYS[1], KEYS[2], ARGV[8], 'status', 'queued', 'error', ARGV[5])
    return 1
  end
end
local attempts = redis.call('HGET', KEYS[2], 'attempts') or ARGV[3]
redis.call('HSET', KEYS[2], 'status', 'failed', 'error', ARGV[5], 'completed_at_ms', ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[10], '*',
  'id', ARGV[9], 'error', ARGV[5], 'attempts', attempts, 'failed_at_ms', ARGV[6])
redis.call('XDEL', KEYS[1], ARGV[2])
drop_image(KEYS[4], KEYS[5])
ended(KEYS[1], KEYS[2], ARGV[9])
end_followers(KEYS[1], KEYS[2], ARGV[7], 'status', 'failed', 'error', ARGV[5], 'completed_at_ms', ARGV[6])
forget_run(KEYS[2], ARGV[9])
return 2
