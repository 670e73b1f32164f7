-- Shared helpers, prepended to every script. KEYS[1] is the pool's key prefix "cf:{pool}:"; every key a
-- script touches starts with it, so all of them hash to one Redis Cluster slot.
-- Keys: ready (zset id->priority*2^40+seq), wake (list of wake-up tokens), seq (counter),
-- inflight (zset id->lease expiry ms), delayed (zset id->due ms), dead (zset id->buried ms),
-- t:<id> (hash: data state attempts fence max lease score enq exp consumer result error, and for the two
-- budgets: fails (retryable handler failures), lost (lost leases), maxlost, lostbk (backoff ms), hold (this
-- claim's lease ms)),
-- consumers (hash consumer->"state|until_ms"); channel done: "id\0state\0attempts\0consumer\0error\0result".
-- Fair share (README, "Fair share"): t:<id> also holds fk (its fairness key), fw (weight), fcap (the key's
-- maxConcurrency, 0: none) and fon (1 while its lease counts against the key). Per priority p: fk:<p> (zset
-- of claimable keys -> virtual time), fb:<p> (keys at their cap -> virtual time); per key fq:<p>:<key> (zset
-- id->score, FIFO) and fs:<key> (hash: n ready tasks, h leases held, cap, w weight, blk 1 at its cap, l<p>
-- its next virtual time); fvt (hash p->virtual time of the last served key), fkeys (keys tracked), favail
-- (ready tasks of claimable keys: the wake-up tokens' target), fver (set once the pool's old tasks are filed).
local P = KEYS[1]
local WAKE_CAP = 10000
local PRIO_UNIT = 1099511627776  -- a ready score is priority * 2^40 + seq
local MAX_KEYS = 10000  -- codeforge.api.limits.MAX_FAIR_KEYS
local OVERFLOW = '\1overflow'  -- codeforge.queue.base.OVERFLOW_KEY: keys past MAX_KEYS share it

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The task's next fencing token: max(old + 1, server time in microseconds). A fence issued after a restart
-- or a failover is greater than every fence issued before it even when Redis lost the task's hash or its
-- last writes (the clock moved on meanwhile), so two holders never share one. About 1.8e15: exact in Lua's
-- doubles (< 2^53) and stored as a plain integer string; compared as numbers.
local function next_fence(tk)
  local t = redis.call('TIME')
  local fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local old = tonumber(redis.call('HGET', tk, 'fence') or '0') or 0
  if old + 1 > fence then fence = old + 1 end
  fence = string.format('%.0f', fence)
  redis.call('HSET', tk, 'fence', fence)
  return fence
end

-- One wake-up token per ready task (capped), so a blocked BLPOP wakes exactly one idle consumer per task.
-- Re-synchronised after every change: stale tokens are trimmed, lost ones (a consumer that died between
-- BLPOP and claim) are replaced.
local function sync_tokens()
  local want = tonumber(redis.call('GET', P .. 'favail') or '0')
  if want > WAKE_CAP then want = WAKE_CAP end
  local have = redis.call('LLEN', P .. 'wake')
  if have > want then
    if want == 0 then redis.call('DEL', P .. 'wake') else redis.call('LTRIM', P .. 'wake', 0, want - 1) end
  elseif have < want then
    local n = want - have
    while n > 0 do
      local k = math.min(n, 1000)
      local tokens = {}
      for i = 1, k do tokens[i] = '1' end
      redis.call('RPUSH', P .. 'wake', unpack(tokens))
      n = n - k
    end
  end
end

local function publish_done(tk, id, state, err, result)
  local info = redis.call('HMGET', tk, 'attempts', 'consumer')
  redis.call('PUBLISH', P .. 'done', id .. '\0' .. state .. '\0' .. (info[1] or '0') .. '\0' .. (info[2] or '')
    .. '\0' .. (err or '') .. '\0' .. (result or ''))
end

-- Fair share: strict priority across levels; within one, the claimable key with the lowest virtual time is
-- served and its time moves on by 1/weight (start-time fair queueing: equal weights take turns), FIFO within
-- a key. A key holding `cap` leases moves to fb:<p> until one ends. Every step is O(log n).
local function fq(p, key) return P .. 'fq:' .. p .. ':' .. key end
local function fs(key) return P .. 'fs:' .. key end
local function num(v) return tonumber(v or '0') or 0 end
local function vnow(p) return num(redis.call('HGET', P .. 'fvt', p)) end

-- Forget a key with nothing ready and nothing running; move it between the claimable and the blocked sets
-- when its leases reached (or left) its cap. Returns true when it became claimable again.
local function refresh_key(key)
  local s = redis.call('HMGET', fs(key), 'n', 'h', 'cap', 'blk')
  local ready, held, cap = num(s[1]), num(s[2]), num(s[3])
  if held <= 0 and ready <= 0 then
    if redis.call('DEL', fs(key)) == 1 then redis.call('DECR', P .. 'fkeys') end
    return false
  end
  local block = cap > 0 and held >= cap
  if block == (s[4] == '1') then return false end
  local from, to = 'fk:', 'fb:'
  if block then
    redis.call('HSET', fs(key), 'blk', 1)
    redis.call('DECRBY', P .. 'favail', ready)
  else
    redis.call('HSET', fs(key), 'blk', 0)
    redis.call('INCRBY', P .. 'favail', ready)
    from, to = 'fb:', 'fk:'
  end
  for p = 1, 4 do
    local vt = redis.call('ZSCORE', P .. from .. p, key)
    if vt then
      redis.call('ZREM', P .. from .. p, key)
      vt = tonumber(vt)
      if not block then vt = math.max(vt, vnow(p)) end
      redis.call('ZADD', P .. to .. p, vt, key)
    end
  end
  return not block
end

-- The task joins the ready set and its key's FIFO; a key with nothing queued at that priority joins at the
-- later of its own next virtual time and the level's current one (an idle key does not bank turns). The
-- key's cap and weight are those its latest ready task carries (Workflows sharing a key should agree).
local function add_ready(tk, id)
  local t = redis.call('HMGET', tk, 'score', 'fk', 'fcap', 'fw')
  local score, key = t[1], t[2] or ''
  local p = math.floor(tonumber(score) / PRIO_UNIT)
  redis.call('ZADD', P .. 'ready', score, id)
  if redis.call('ZADD', fq(p, key), score, id) == 0 then return end
  local k = fs(key)
  if redis.call('EXISTS', k) == 0 then redis.call('INCR', P .. 'fkeys') end
  local s = redis.call('HMGET', k, 'blk', 'l' .. p)
  redis.call('HINCRBY', k, 'n', 1)
  redis.call('HSET', k, 'cap', num(t[3]), 'w', math.max(num(t[4]), 1))
  if s[1] ~= '1' then redis.call('INCR', P .. 'favail') end
  local vt = math.max(num(s[2]), vnow(p))
  redis.call('ZADD', P .. (s[1] == '1' and 'fb:' or 'fk:') .. p, 'NX', vt, key)
  refresh_key(key)  -- the cap may have changed
end

-- Take a queued task out of the ready set (a cancel); false when it was not there.
local function drop_ready(tk, id)
  if redis.call('ZREM', P .. 'ready', id) == 0 then return false end
  local t = redis.call('HMGET', tk, 'score', 'fk')
  local p, key = math.floor(tonumber(t[1]) / PRIO_UNIT), t[2] or ''
  redis.call('ZREM', fq(p, key), id)
  if redis.call('HINCRBY', fs(key), 'n', -1) >= 0 and redis.call('HGET', fs(key), 'blk') ~= '1' then
    redis.call('DECR', P .. 'favail')
  end
  if redis.call('EXISTS', fq(p, key)) == 0 then
    redis.call('ZREM', P .. 'fk:' .. p, key)
    redis.call('ZREM', P .. 'fb:' .. p, key)
  end
  refresh_key(key)
  return true
end

-- The next task to claim: the most urgent level with a claimable key, that level's key with the lowest
-- virtual time, that key's oldest task. Its lease counts against the key's cap from now on (the caller
-- marks the task with fon=1).
local function pick()
  for p = 1, 4 do
    local top = redis.call('ZRANGE', P .. 'fk:' .. p, 0, 0, 'WITHSCORES')
    if top[1] then
      local key, vt = top[1], tonumber(top[2])
      local id = redis.call('ZPOPMIN', fq(p, key))[1]
      redis.call('ZREM', P .. 'ready', id)
      redis.call('HSET', P .. 'fvt', p, vt)
      local k = fs(key)
      local s = redis.call('HMGET', k, 'w', 'n', 'h', 'cap')
      local nxt, held, cap = vt + 1 / math.max(num(s[1]), 1), num(s[3]) + 1, num(s[4])
      redis.call('HSET', k, 'l' .. p, nxt, 'n', num(s[2]) - 1, 'h', held)
      redis.call('DECR', P .. 'favail')
      if redis.call('EXISTS', fq(p, key)) == 1 then
        redis.call('ZADD', P .. 'fk:' .. p, nxt, key)
      else
        redis.call('ZREM', P .. 'fk:' .. p, key)
      end
      if cap > 0 and held >= cap then refresh_key(key) end
      return id
    end
  end
  return nil
end

-- A lease ended (completed, failed, released, cancelled, expired): one slot of its key frees. Returns true
-- when that made the key claimable again (its waiting tasks need wake-up tokens).
local function end_lease(tk, id)
  redis.call('ZREM', P .. 'inflight', id)
  local t = redis.call('HMGET', tk, 'fon', 'fk')
  if t[1] ~= '1' then return false end
  redis.call('HSET', tk, 'fon', 0)
  redis.call('HINCRBY', fs(t[2] or ''), 'h', -1)
  return refresh_key(t[2] or '')
end

-- Tasks queued before fair share existed sit in `ready` only: file them under their key once.
local function migrate()
  if redis.call('EXISTS', P .. 'fver') == 1 then return end
  local ids = redis.call('ZRANGE', P .. 'ready', 0, -1)
  redis.call('DEL', P .. 'ready')
  for _, id in ipairs(ids) do add_ready(P .. 't:' .. id, id) end
  redis.call('SET', P .. 'fver', 1)
end

local function to_ready(tk, id)
  redis.call('HSET', tk, 'state', 'queued', 'consumer', '')
  add_ready(tk, id)
end

-- The consumer field stays: it names the agent that finished the task (or held it last).
local function finish(tk, id, state, err, result, ttl)
  redis.call('HSET', tk, 'state', state, 'error', err or '', 'result', result or '')
  redis.call('EXPIRE', tk, ttl)
  publish_done(tk, id, state, err, result)
end

-- Two budgets (DESIGN.md section 3, "Retries"); a dead letter's error ends with the one that ran out.
local LOST_BACKOFF_CAP_MS = 60000  -- codeforge.api.task.LOST_LEASE_BACKOFF_CAP_SECONDS

local function requeue(tk, id, err, now, delay_ms)
  redis.call('HSET', tk, 'error', err)
  if delay_ms > 0 then
    redis.call('HSET', tk, 'state', 'queued', 'consumer', '')
    redis.call('ZADD', P .. 'delayed', now + delay_ms, id)
  else
    to_ready(tk, id)
  end
  return 'queued'
end

local function bury(tk, id, err, now)
  redis.call('HSET', tk, 'state', 'dead', 'error', err)
  redis.call('ZADD', P .. 'dead', now, id)
  publish_done(tk, id, 'dead', err, nil)
  return 'dead'
end

-- A retryable handler failure spends one of the handler's `max` runs.
local function retry_or_bury(tk, id, err, now, delay_ms)
  local fails = redis.call('HINCRBY', tk, 'fails', 1)
  local max = tonumber(redis.call('HGET', tk, 'max'))
  if fails >= max then
    return bury(tk, id, err .. '; handler budget spent: failed ' .. fails .. ' of ' .. max
      .. ' allowed times (max_attempts)', now)
  end
  return requeue(tk, id, err, now, delay_ms)
end

-- A lost lease (the agent died, or stopped mid-task on a drain) spends the separate lost-lease budget, never
-- the handler's; the redelivery waits lostbk * 2^(losses-1) ms (capped), unless `backoff` is false.
local function lose_lease(tk, id, err, now, backoff)
  local lost = redis.call('HINCRBY', tk, 'lost', 1)
  local info = redis.call('HMGET', tk, 'maxlost', 'lostbk')
  local max = tonumber(info[1] or '10')
  if lost >= max then
    return bury(tk, id, err .. '; lost-lease budget spent: lost ' .. lost .. ' of ' .. max
      .. ' allowed leases (max_lost_leases; its agents died or stopped heartbeating)', now)
  end
  local delay = 0
  if backoff then delay = math.min(tonumber(info[2] or '1000') * 2 ^ (lost - 1), LOST_BACKOFF_CAP_MS) end
  return requeue(tk, id, err, now, math.floor(delay))
end

-- Expired leases go back to the queue (or to the dead-letter queue); the fence moves on, so the old
-- holder's complete/fail/heartbeat is refused.
local function reap(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'inflight', '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local tk = P .. 't:' .. id
    end_lease(tk, id)
    next_fence(tk)
    local info = redis.call('HMGET', tk, 'hold', 'lease', 'attempts')
    lose_lease(tk, id, 'lease expired after ' .. (tonumber(info[1] or info[2]) / 1000) .. 's without a heartbeat'
      .. ' (delivery ' .. info[3] .. ')', now, true)
  end
  return #ids
end

local function promote(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', P .. 'delayed', id)
    to_ready(P .. 't:' .. id, id)
  end
  return #ids
end

-- nil when the caller still holds the task under `fence`, else why not: gone, cancelled or stale.
local function check_holder(tk, fence, now)
  local st = redis.call('HMGET', tk, 'state', 'fence', 'exp')
  if not st[1] then return 'gone' end
  if st[1] == 'cancelled' then return 'cancelled' end
  if st[1] ~= 'running' or st[2] ~= fence then return 'stale' end
  if tonumber(st[3]) <= now then
    reap(now, 100)
    sync_tokens()
    return 'stale'
  end
  return nil
end
