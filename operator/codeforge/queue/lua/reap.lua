-- ARGV: dead-letter retention in ms (0: keep forever). Requeues expired leases and due retries, and removes
-- dead letters older than the retention (counted in dead_expired); returns how many leases had expired.
local now = now_ms()
migrate()
local total = 0
repeat
  local n = reap(now, 500)
  total = total + n
until n < 500
while promote(now, 1000) == 1000 do end
hand_out(now)
local retention = tonumber(ARGV[1] or '0') or 0
if retention > 0 then
  -- At most 1000 per call, so one reap never blocks Redis for long; reaps run every few seconds.
  local old = redis.call('ZRANGEBYSCORE', P .. 'dead', '-inf', now - retention, 'LIMIT', 0, 1000)
  for _, id in ipairs(old) do
    redis.call('ZREM', P .. 'dead', id)
    redis.call('DEL', P .. 't:' .. id)
  end
  if #old > 0 then redis.call('INCRBY', P .. 'dead_expired', #old) end
end
return total
