-- No ARGV. Requeues expired leases and due retries; returns how many leases had expired.
local now = now_ms()
migrate()
local total = 0
repeat
  local n = reap(now, 500)
  total = total + n
until n < 500
while promote(now, 1000) == 1000 do end
sync_tokens()
return total
