-- ARGV: id, fence, error, retryable (1/0), delay_ms, ttl_seconds. Returns the new state or a refusal code.
local now = now_ms()
local id, fence = ARGV[1], ARGV[2]
local tk = P .. 't:' .. id
local refused = check_holder(tk, fence, now)
if refused then
  local st = redis.call('HMGET', tk, 'state', 'fence', 'error')
  -- A retried call whose first try went through: report what it did.
  if refused == 'stale' and st[2] == fence and st[3] and string.sub(st[3], 1, #ARGV[3]) == ARGV[3] then
    return st[1]
  end
  return 'refused:' .. refused
end
end_lease(tk, id)
if ARGV[4] ~= '1' then
  finish(tk, id, 'failed', ARGV[3], nil, tonumber(ARGV[6]), now)
  sync_tokens()
  return 'failed'
end
local state = retry_or_bury(tk, id, ARGV[3], now, tonumber(ARGV[5]))
sync_tokens()
return state
