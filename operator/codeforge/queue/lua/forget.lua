-- ARGV: ids. Deletes the records of those tasks that ended (succeeded, failed, cancelled): a finished
-- Workflow's TTL clean-up. Queued and running tasks stay (a record under a lease must not vanish) and so do
-- dead letters (their own retention, or `codeforge dlq purge`). Returns how many went.
local removed = 0
for _, id in ipairs(ARGV) do
  local tk = P .. 't:' .. id
  local state = redis.call('HGET', tk, 'state')
  if state == 'succeeded' or state == 'failed' or state == 'cancelled' then
    redis.call('DEL', tk)
    removed = removed + 1
  end
end
return removed
