-- Stores a job completed without a worker: see FINISH_NOW_LUA in scripts.rs for KEYS and ARGV.
redis.call('UNLINK', KEYS[3])
-- Run again after a lost reply (it is retried): the job is there already, its webhook queued.
if redis.call('HGET', KEYS[2], 'status') == 'completed' then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'status', 'completed', 'sync', ARGV[1], 'result', ARGV[2], 'attempts', 0,
  'created_at_ms', ARGV[3], 'completed_at_ms', ARGV[4], 'source', ARGV[7])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'callback', ARGV[6]) end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
ended(KEYS[1], KEYS[2], ARGV[8])
return 1
