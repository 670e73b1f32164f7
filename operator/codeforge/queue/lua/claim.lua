-- ARGV: consumer, max_tasks, lease_ms (the consumer's lease length; 0: the task's own). Returns {now_ms, next_due_ms or -1, id, data, attempts, fence, exp, waited_ms, ...}.
local now = now_ms()
migrate()
reap(now, 100)
promote(now, 1000)
local out = {now, -1}
local want = tonumber(ARGV[2])
-- Nothing claimable (empty, or every ready task's key at its cap): skip the per-level look-ups.
if redis.call('ZCARD', P .. 'ready') - num(redis.call('GET', P .. 'fbn')) <= 0 then want = 0 end
local hold_arg = tonumber(ARGV[3] or '0')
while want > 0 do
  local ids = pick(want)
  if #ids == 0 then break end
  want = want - #ids
  for _, id in ipairs(ids) do
    local tk = P .. 't:' .. id
    local attempts = redis.call('HINCRBY', tk, 'attempts', 1)
    local fence = next_fence(tk)
    local info = redis.call('HMGET', tk, 'lease', 'data', 'rdy', 'enq')
    local hold = hold_arg
    if hold <= 0 then hold = tonumber(info[1]) end
    local exp = now + hold
    redis.call('HSET', tk, 'state', 'running', 'consumer', ARGV[1], 'exp', exp, 'hold', hold, 'clm', now)
    redis.call('ZADD', P .. 'inflight', exp, id)
    out[#out + 1] = id
    out[#out + 1] = info[2]
    out[#out + 1] = attempts
    out[#out + 1] = fence
    out[#out + 1] = exp
    -- ms it waited ready in the queue (tasks queued before 'rdy' existed count from their enqueue)
    out[#out + 1] = math.max(now - (tonumber(info[3] or info[4] or '') or now), 0)
  end
end
sync_tokens()
if #out == 2 then
  -- When nothing is ready, tell the caller when something will be (a retry backoff or a lease running out),
  -- so its blocking wait ends exactly then instead of polling.
  local due = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
  local exp = redis.call('ZRANGE', P .. 'inflight', 0, 0, 'WITHSCORES')
  local next_due = -1
  if due[2] then next_due = tonumber(due[2]) end
  if exp[2] and (next_due < 0 or tonumber(exp[2]) < next_due) then next_due = tonumber(exp[2]) end
  out[2] = next_due
end
return out
