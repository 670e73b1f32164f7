-- ARGV: consumer, max_tasks, lease_ms (the consumer's lease length; 0: the task's own), idle_ms (when nothing
-- is claimable, register the consumer as idle this long, so tasks are handed to it: see hand_out; 0: do
-- not), member (its earlier registration, '' when it holds none: dropped, and leases handed over that its
-- pop did not return are returned now). Returns {now_ms, next_due_ms or -1, id, data, attempts, fence,
-- exp, waited_ms, ...}.
local now = now_ms()
local consumer, want, hold = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3] or '0')
local idle_ms, member = tonumber(ARGV[4] or '0'), ARGV[5] or ''
local moved = reap(now, 100) + promote(now, 1000)
local out = {now, -1}
-- Leases handed over that its pop did not return (its wait ended as they came): still its, if the fence says
-- so; beyond what it asks for now, back in line unstarted with nothing spent (as a release).
local function drain()
  local handed = redis.call('LPOP', P .. 'h:' .. consumer, 1000)
  for _, msg in ipairs(handed or {}) do
    local f, s = {}, 1
    while true do
      local e = string.find(msg, '\0', s, true)
      f[#f + 1] = string.sub(msg, s, (e or 0) - 1)
      if not e then break end
      s = e + 1
    end
    for i = 1, #f, 6 do
      local tk = P .. 't:' .. f[i]
      local st = redis.call('HMGET', tk, 'state', 'fence', 'consumer', 'fk')
      if st[1] == 'running' and st[2] == f[i + 3] and st[3] == consumer then
        if want > 0 then
          for j = i, i + 5 do out[#out + 1] = f[j] end
          want = want - 1
        else
          end_lease(tk, f[i], st[4] or '')
          next_fence(tk)
          redis.call('HINCRBY', tk, 'attempts', -1)
          to_ready(tk, f[i], now)
          moved = moved + 1
        end
      end
    end
  end
end

if member ~= '' then
  redis.call('ZREM', P .. 'idle', member)
  drain()
end
if want > 0 then take(out, want, consumer, hold, now) end
-- About to wait: first what an earlier wait of this consumer (a restarted process of the same name) left.
if #out == 2 and member == '' and idle_ms > 0 then drain() end
if #out == 2 then
  -- When nothing is ready, tell the caller when something will be (a retry backoff or a lease running out),
  -- so its blocking wait ends exactly then instead of polling.
  local due = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
  local exp = redis.call('ZRANGE', P .. 'inflight', 0, 0, 'WITHSCORES')
  local next_due = -1
  if due[2] then next_due = tonumber(due[2]) end
  if exp[2] and (next_due < 0 or tonumber(exp[2]) < next_due) then next_due = tonumber(exp[2]) end
  out[2] = next_due
  if idle_ms > 0 then
    -- Registrations whose wait ended (their consumers died or stopped) go as a new one comes, so `idle`
    -- holds the live ones; hand_out passes over ended ones without this call on the enqueue's path.
    redis.call('ZREMRANGEBYSCORE', P .. 'idle', '-inf', now)
    redis.call('ZADD', P .. 'idle', now + idle_ms, ARGV[2] .. '|' .. hold .. '|' .. consumer)
  end
end
if moved > 0 then hand_out(now) end  -- the reap or promote readied tasks others may be waiting for
return out
