-- ARGV: id, reason, ttl_seconds, only_queued (1: only a task no consumer holds: ready, held back by its key's
-- cap or waiting out a retry backoff; a claimed one, handed over ones included, is left running). Returns 1
-- when the task was cancelled, else 0. One script: a claim runs wholly before or after it, never between.
local now = now_ms()
local id = ARGV[1]
local tk = P .. 't:' .. id
local state = redis.call('HGET', tk, 'state')
if state ~= 'queued' and (state ~= 'running' or ARGV[4] == '1') then return 0 end
drop_ready(tk, id)
redis.call('ZREM', P .. 'delayed', id)
local unblocked = end_lease(tk, id)
finish(tk, id, 'cancelled', ARGV[2], nil, tonumber(ARGV[3]), now)
if unblocked then hand_out(now) end
return 1
