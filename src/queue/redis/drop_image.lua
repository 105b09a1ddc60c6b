-- Prepended to every script that deletes a queued job's image (scripts.rs).
-- Deletes the image and gives its bytes back to the queued-bytes counter, in the same step.
-- Sized from the image itself, so a second call for the same job (a duplicate result, a job
-- finished twice) finds nothing to give back; and a counter that would go below 0 (images
-- queued before the counter existed) is dropped, as a missing counter is 0.
local function drop_image(image, counter)
  local size = redis.call('STRLEN', image)
  if size > 0 and redis.call('DECRBY', counter, size) <= 0 then
    redis.call('DEL', counter)
  end
  redis.call('UNLINK', image)
end

