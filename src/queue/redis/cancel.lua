-- Undoes an enqueue whose answer was lost: see CANCEL_LUA in scripts.rs for KEYS and the reply.
local existed = redis.call('DEL', KEYS[1])
if redis.call('PTTL', KEYS[2]) > 0 then
  -- Still only staged (the enqueue never ran, or was fenced): never counted in KEYS[3].
  redis.call('UNLINK', KEYS[2])
else
  -- Queued (its expiry removed): its bytes go back now, once; the worker that meets its entry
  -- (START, COMPLETE, FAIL) finds the image gone and gives nothing back again.
  drop_image(KEYS[2], KEYS[3])
end
return existed
