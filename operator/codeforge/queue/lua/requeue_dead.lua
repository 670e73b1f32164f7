-- ARGV: id. Moves a dead task back into the queue with both budgets and its attempts reset. Returns 1, or 0 if not dead.
local now = now_ms()
local id = ARGV[1]
if redis.call('ZREM', P .. 'dead', id) == 0 then return 0 end
local tk = P .. 't:' .. id
redis.call('HSET', tk, 'attempts', 0, 'fails', 0, 'lost', 0, 'error', '')
to_ready(tk, id, now)
hand_out(now)
return 1
