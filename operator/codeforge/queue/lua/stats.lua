-- No ARGV. Returns {ready, delayed, inflight, dead, oldest_ready_age_ms, dead_expired}: a few O(log n) reads.
local now = now_ms()
local oldest = now
for prio = 1, 4 do
  local lo = prio * 1099511627776
  local first = redis.call('ZRANGEBYSCORE', P .. 'ready', lo, lo + 1099511627775, 'LIMIT', 0, 1)
  if first[1] then
    local enq = tonumber(redis.call('HGET', P .. 't:' .. first[1], 'enq'))
    if enq and enq < oldest then oldest = enq end
  end
end
return {redis.call('ZCARD', P .. 'ready'), redis.call('ZCARD', P .. 'delayed'), redis.call('ZCARD', P .. 'inflight'),
  redis.call('ZCARD', P .. 'dead'), now - oldest,
  tonumber(redis.call('GET', P .. 'dead_expired') or '0')}
