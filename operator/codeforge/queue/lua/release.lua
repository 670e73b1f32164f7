-- ARGV: id, fence. Gives an unstarted task back: same place in the queue, the attempt not counted.
local now = now_ms()
local id, fence = ARGV[1], ARGV[2]
local tk = P .. 't:' .. id
local refused = check_holder(tk, fence, now)
if refused then return refused end
redis.call('ZREM', P .. 'inflight', id)
redis.call('HINCRBY', tk, 'attempts', -1)
next_fence(tk)
to_ready(tk, id)
sync_tokens()
return 'ok'
