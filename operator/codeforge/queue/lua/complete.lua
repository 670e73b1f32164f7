-- ARGV: ttl_seconds, n, then per item: id, fence, result. Returns one code per item: ok, stale, cancelled, gone.
local now = now_ms()
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local out = {}
local unblocked = false
for i = 0, n - 1 do
  local b = 3 + i * 3
  local id, fence = ARGV[b], ARGV[b + 1]
  local tk = P .. 't:' .. id
  local refused, st = check_holder(tk, fence, now)
  if refused == 'stale' then
    -- A retried call whose first try went through finds its own result: not a second recording.
    local done = redis.call('HMGET', tk, 'state', 'fence', 'result')
    if done[1] == 'succeeded' and done[2] == fence and done[3] == ARGV[b + 2] then refused = 'dup' end
  end
  if refused then
    out[#out + 1] = refused == 'dup' and 'ok' or refused
  else
    if end_lease(tk, id, st[4] or '') then unblocked = true end
    finish(tk, id, 'succeeded', nil, ARGV[b + 2], ttl, now, {st[5], st[6], st[7], st[8]})
    out[#out + 1] = 'ok'
  end
end
if unblocked then hand_out(now) end  -- a key below its cap again has tasks for idle consumers
return out
