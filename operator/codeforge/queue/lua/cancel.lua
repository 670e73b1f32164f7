-- ARGV: id, reason, ttl_seconds. Returns 1 when a queued or running task was cancelled, else 0.
local now = now_ms()
local id = ARGV[1]
local tk = P .. 't:' .. id
local state = redis.call('HGET', tk, 'state')
if state ~= 'queued' and state ~= 'running' then return 0 end
drop_ready(tk, id)
redis.call('ZREM', P .. 'delayed', id)
local unblocked = end_lease(tk, id)
finish(tk, id, 'cancelled', ARGV[2], nil, tonumber(ARGV[3]), now)
if unblocked then hand_out(now) end
return 1
