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
  local refused = check_holder(tk, fence, now)
  if refused == 'stale' then
    -- A retried call whose first try went through finds its own result: not a second recording.
    local st = redis.call('HMGET', tk, 'state', 'fence', 'result')
    if st[1] == 'succeeded' and st[2] == fence and st[3] == ARGV[b + 2] then refused = 'dup' end
  end
  if refused then
    out[#out + 1] = refused == 'dup' and 'ok' or refused
  else
    if end_lease(tk, id) then unblocked = true end
    finish(tk, id, 'succeeded', nil, ARGV[b + 2], ttl, now)
    out[#out + 1] = 'ok'
  end
end
if unblocked then sync_tokens() end  -- a key below its cap again has tasks to hand out
return out
