-- ARGV: id, fence. Returns {'ok', new_expiry_ms} or {code}.
local now = now_ms()
local id, fence = ARGV[1], ARGV[2]
local tk = P .. 't:' .. id
local refused, st = check_holder(tk, fence, now)
if refused then return {refused} end
local exp = now + tonumber(st[9] or st[10])  -- this claim's lease length
redis.call('HSET', tk, 'exp', exp)
redis.call('ZADD', P .. 'inflight', exp, id)
return {'ok', exp}
