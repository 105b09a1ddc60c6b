-- Reads a cached result: see LOOKUP_LUA in scripts.rs for KEYS, ARGV and the reply.
local identity = redis.call('GET', KEYS[1])
if not identity then return false end
return redis.call('GET', ARGV[1] .. identity .. ':' .. ARGV[2])
