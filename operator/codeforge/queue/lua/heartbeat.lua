-- ARGV: id, fence. Returns {'ok', new_expiry_ms} or {code}.
local now = now_ms()
local id, fence = ARGV[1], ARGV[2]
local tk = P .. 't:' .. id
local refused = check_holder(tk, fence, now)
if refused then return {refused} end
local exp = now + tonumber(redis.call('HGET', tk, 'lease'))
redis.call('HSET', tk, 'exp', exp)
redis.call('ZADD', P .. 'inflight', exp, id)
return {'ok', exp}
