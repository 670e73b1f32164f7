-- ARGV: n, then per task: id, priority, max_attempts, lease_ms, data, max_lost_leases, lost_backoff_ms,
-- fair key, weight, max_concurrency (0: none). Returns one 1 (added) / 0 (exists) per task.
local now = now_ms()
migrate()
local n = tonumber(ARGV[1])
local out = {}
local seq = redis.call('INCRBY', P .. 'seq', n) - n  -- one sequence number per task, taken at once
local keys = num(redis.call('GET', P .. 'fkeys'))
for i = 0, n - 1 do
  local b = 2 + i * 10
  local id = ARGV[b]
  local tk = P .. 't:' .. id
  if redis.call('EXISTS', tk) == 1 then
    out[#out + 1] = 0
  else
    local score = tonumber(ARGV[b + 1]) * PRIO_UNIT + seq + i + 1
    local key = ARGV[b + 7]
    -- The number of keys a pool tracks is bounded: past it, new keys share one (served, but as one key).
    if keys >= MAX_KEYS and redis.call('EXISTS', P .. 'fs:' .. key) == 0 then
      key = OVERFLOW
    end
    local cap, w = num(ARGV[b + 9]), num(ARGV[b + 8])
    redis.call('HSET', tk, 'data', ARGV[b + 4], 'state', 'queued', 'attempts', 0, 'fence', 0,
      'max', ARGV[b + 2], 'lease', ARGV[b + 3], 'score', score, 'enq', now, 'rdy', now, 'fails', 0, 'lost', 0,
      'maxlost', ARGV[b + 5], 'lostbk', ARGV[b + 6], 'fk', key, 'fw', w, 'fcap', cap)
    if add_ready(tk, id, score, key, cap, w) then keys = keys + 1 end
    out[#out + 1] = 1
  end
end
hand_out(now)
return out
