-- ARGV: id, fence. Returns {'ok', new_expiry_ms} or {code}.
local now = now_ms()
local id, fence = ARGV[1], ARGV[2]
local tk = P .. 't:' .. id
local refused = check_holder(tk, fence, now)
if refused then return {refused} end
local hold = redis.call('HMGET', tk, 'hold', 'lease')  -- this claim's lease length
local exp = now + tonumber(hold[1] or hold[2])
redis.call('HSET', tk, 'exp', exp)
redis.call('ZADD', P .. 'inflight', exp, id)
return {'ok', exp}
