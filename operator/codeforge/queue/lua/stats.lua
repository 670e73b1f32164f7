-- No ARGV. Returns {ready, delayed, inflight, dead, oldest_ready_age_ms, dead_expired, held_back}: a few O(log n)
-- reads. held_back (fbn, kept by lib.lua) counts the ready tasks of keys at their cap; ready includes them.
-- The age counts from when the task last became ready (rdy), so a retry that just came back is not "old" for
-- its earlier runs.
local now = now_ms()
local oldest = now
for prio = 1, 4 do
  local lo = prio * 1099511627776
  local first = redis.call('ZRANGEBYSCORE', P .. 'ready', lo, lo + 1099511627775, 'LIMIT', 0, 1)
  if first[1] then
    local times = redis.call('HMGET', P .. 't:' .. first[1], 'rdy', 'enq')
    local since = tonumber(times[1] or times[2] or '')
    if since and since < oldest then oldest = since end
  end
end
return {redis.call('ZCARD', P .. 'ready'), redis.call('ZCARD', P .. 'delayed'), redis.call('ZCARD', P .. 'inflight'),
  redis.call('ZCARD', P .. 'dead'), now - oldest,
  tonumber(redis.call('GET', P .. 'dead_expired') or '0'), num(redis.call('GET', P .. 'fbn'))}
