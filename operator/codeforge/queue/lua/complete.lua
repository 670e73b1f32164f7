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
    local result = ARGV[b + 2]
    if #result > MAX_RESULT then
      -- Only a client that is not codeforge's sends one (encode_result refuses it first): the task ends
      -- failed, saying why, and the result is not kept (a later step, a checkpoint or CEL would carry it).
      local why = 'the result is ' .. #result .. ' bytes of JSON, over the limit of ' .. MAX_RESULT ..
        ': keep large outputs in the workspace or object storage and return a reference'
      finish(tk, id, 'failed', why, nil, ttl, now, {st[5], st[6], st[7], st[8]})
    else
      finish(tk, id, 'succeeded', nil, result, ttl, now, {st[5], st[6], st[7], st[8]})
    end
    out[#out + 1] = 'ok'
  end
end
if unblocked then hand_out(now) end  -- a key below its cap again has tasks for idle consumers
return out
