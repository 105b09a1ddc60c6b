
-- Prepended to every script that ends a job (scripts.rs): whoever waits on it is told, and its
-- webhook, if it has a callback, is queued on `{stream}:webhooks`, in the same atomic step as
-- the final state, so a delivery is never lost between the two.
local function ended(stream, hash, job)
  redis.call('PUBLISH', stream .. ':events', job)
  if redis.call('HEXISTS', hash, 'callback') == 1 then
    redis.call('XADD', stream .. ':webhooks', '*', 'id', job)
  end
end
