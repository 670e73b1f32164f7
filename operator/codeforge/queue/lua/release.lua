-- ARGV: id, fence, started (1/0), reason. Gives a claimed task back. Unstarted (a drain's late claim): same
-- place in the queue, nothing spent. Started and interrupted (a drain's grace ran out): one lost lease spent,
-- redelivered at once. Returns the new state ('queued' or 'dead') or a refusal code.
local now = now_ms()
local id, fence = ARGV[1], ARGV[2]
local tk = P .. 't:' .. id
local refused, st = check_holder(tk, fence, now)
if refused then return refused end
end_lease(tk, id, st[4] or '')
next_fence(tk)
local state = 'queued'
if ARGV[3] == '1' then
  state = lose_lease(tk, id, ARGV[4], now, false)
else
  redis.call('HINCRBY', tk, 'attempts', -1)
  to_ready(tk, id, now)
end
hand_out(now)
return state
