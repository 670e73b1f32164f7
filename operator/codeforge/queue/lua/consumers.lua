-- ARGV: consumer, state, ttl_ms (set when consumer is non-empty). Returns live {consumer, state, ...}; prunes the rest.
local now = now_ms()
local key = P .. 'consumers'
if ARGV[1] ~= '' then redis.call('HSET', key, ARGV[1], ARGV[2] .. '|' .. (now + tonumber(ARGV[3]))) return {} end
local all = redis.call('HGETALL', key)
local out = {}
for i = 1, #all, 2 do
  local sep = string.find(all[i + 1], '|', 1, true)
  if tonumber(string.sub(all[i + 1], sep + 1)) > now then
    out[#out + 1] = all[i]
    out[#out + 1] = string.sub(all[i + 1], 1, sep - 1)
  else
    redis.call('HDEL', key, all[i])
  end
end
return out
