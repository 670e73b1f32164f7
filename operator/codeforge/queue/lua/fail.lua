-- ARGV: id, fence, error, retryable (1/0), delay_ms, ttl_seconds. Returns the new state or a refusal code.
local now = now_ms()
local id, fence = ARGV[1], ARGV[2]
local tk = P .. 't:' .. id
local refused, st = check_holder(tk, fence, now)
if refused then
  local done = redis.call('HMGET', tk, 'state', 'fence', 'error')
  -- A retried call whose first try went through: report what it did.
  if refused == 'stale' and done[2] == fence and done[3] and string.sub(done[3], 1, #ARGV[3]) == ARGV[3] then
    return done[1]
  end
  return 'refused:' .. refused
end
end_lease(tk, id, st[4] or '')
if ARGV[4] ~= '1' then
  finish(tk, id, 'failed', ARGV[3], nil, tonumber(ARGV[6]), now, {st[5], st[6], st[7], st[8]})
  hand_out(now)
  return 'failed'
end
local state = retry_or_bury(tk, id, ARGV[3], now, tonumber(ARGV[5]))
hand_out(now)
return state
