-- ARGV: n, then per task: id, priority, max_attempts, lease_ms, data, max_lost_leases, lost_backoff_ms,
-- fair key, weight, max_concurrency (0: none). Returns one 1 (added) / 0 (exists) per task.
local now = now_ms()
-- The pool's counters in one read: fver (its older tasks filed under their keys), keys tracked, ready tasks
-- held back (keys at their cap).
local counts = redis.call('MGET', P .. 'fver', P .. 'fkeys', P .. 'fbn')
if not counts[1] and migrate() then counts = redis.call('MGET', P .. 'fver', P .. 'fkeys', P .. 'fbn') end
local n = tonumber(ARGV[1])
local out = {}
local seq = redis.call('INCRBY', P .. 'seq', n) - n  -- one sequence number per task, taken at once
local keys = num(counts[2])

-- One task and a consumer waiting, nothing else claimable (a step dispatched to an idle pool: the common
-- case, and the one whose latency counts): the task is the one hand_out's pick would take, so it is leased
-- to that consumer here, its hash written once with its lease, and its key's fair-share state moved as
-- add_ready then pick would move it (one lease more, the key's and the level's virtual time on by one turn),
-- without filing it in ready, its key's FIFO and the level's key set only to take it out again. Anything
-- else (a key at or reaching past its cap, ready tasks of another key, no consumer) takes the general path.
-- True when it was handed over.
local function enqueue_handed(b, id, tk, prio, score, key, cap, w)
  if redis.call('EXISTS', P .. 'idle') == 0 then return false end
  if redis.call('ZCARD', P .. 'ready') > num(counts[3]) then return false end  -- claimable() > 0
  local st = key_state(key, prio)
  if st.blk or st.n[1] + st.n[2] + st.n[3] + st.n[4] > 0 or (cap > 0 and st.h >= cap) then return false end
  local member, until_ms, consumer, _, hold_ms = next_idle(now)
  if not member then return false end
  local kw = math.max(w, 1)
  local level = vnow(prio)
  local vt = math.max(st.last, level)
  local hold = hold_ms
  if hold <= 0 then hold = tonumber(ARGV[b + 3]) end
  local exp, fence = now + hold, fence_after(nil)
  redis.call('HSET', tk, 'data', ARGV[b + 4], 'state', 'running', 'attempts', 1, 'fence', fence,
    'max', ARGV[b + 2], 'lease', ARGV[b + 3], 'score', score, 'enq', now, 'rdy', now, 'fails', 0, 'lost', 0,
    'maxlost', ARGV[b + 5], 'lostbk', ARGV[b + 6], 'fk', key, 'fw', w, 'fcap', cap,
    'consumer', consumer, 'exp', exp, 'hold', hold, 'clm', now)
  redis.call('ZADD', P .. 'inflight', exp, id)
  if not st.known then redis.call('INCR', P .. 'fkeys') end
  local h = st.h + 1
  redis.call('HSET', fs(key), 'h', h, 'cap', cap, 'w', kw, 'l' .. prio, vt + 1 / kw, 'blk',
    (cap > 0 and h >= cap) and 1 or 0)
  if vt ~= level then redis.call('HSET', P .. 'fvt', prio, vt) end  -- moved only if the key was ahead of it
  push_handed(consumer, {id, ARGV[b + 4], 1, fence, exp, 0}, until_ms, now)
  return true
end

local handed = false
for i = 0, n - 1 do
  local b = 2 + i * 10
  local id = ARGV[b]
  local tk = P .. 't:' .. id
  if redis.call('EXISTS', tk) == 1 then
    out[#out + 1] = 0
  else
    local prio = tonumber(ARGV[b + 1])
    local score = prio * PRIO_UNIT + seq + i + 1
    local key = ARGV[b + 7]
    -- The number of keys a pool tracks is bounded: past it, new keys share one (served, but as one key).
    if keys >= MAX_KEYS and redis.call('EXISTS', P .. 'fs:' .. key) == 0 then
      key = OVERFLOW
    end
    local cap, w = num(ARGV[b + 9]), num(ARGV[b + 8])
    handed = n == 1 and enqueue_handed(b, id, tk, prio, score, key, cap, w)
    if not handed then
      redis.call('HSET', tk, 'data', ARGV[b + 4], 'state', 'queued', 'attempts', 0, 'fence', 0,
        'max', ARGV[b + 2], 'lease', ARGV[b + 3], 'score', score, 'enq', now, 'rdy', now, 'fails', 0, 'lost', 0,
        'maxlost', ARGV[b + 5], 'lostbk', ARGV[b + 6], 'fk', key, 'fw', w, 'fcap', cap)
      if add_ready(tk, id, score, key, cap, w) then keys = keys + 1 end
    end
    out[#out + 1] = 1
  end
end
if not handed then hand_out(now) end
return out
