-- Shared helpers, prepended to every script. KEYS[1] is the pool's key prefix "cf:{pool}:"; every key a
-- script touches starts with it, so all of them hash to one Redis Cluster slot.
-- Keys: ready (zset id->priority*2^40+seq), seq (counter),
-- inflight (zset id->lease expiry ms), delayed (zset id->due ms), dead (zset id->buried ms),
-- dead_expired (counter of dead letters removed past their retention),
-- t:<id> (hash: data state attempts fence max lease score enq exp consumer result error, and for the two
-- budgets: fails (retryable handler failures), lost (lost leases), maxlost, lostbk (backoff ms), hold (this
-- claim's lease ms); for the metrics, all by the server's clock: rdy (ms it last became ready to claim), clm
-- (ms of its last claim), fin (ms it ended)),
-- consumers (hash consumer->"state|until_ms");
-- handover (README, "Handover"): idle (zset "max|lease_ms|consumer" -> until ms: consumers blocked in a claim
-- right now), h:<consumer> (list: leases handed to that consumer, each one message of the claim reply's
-- fields joined by \0, for its blocking pop);
-- channel done: "id\0state\0attempts\0consumer\0fin_ms\0run_ms\0error\0result" (run_ms: claim -> end of
-- the delivery that ended it, empty when it ended unclaimed).
-- Fair share (README, "Fair share"): t:<id> also holds fk (its fairness key), fw (weight) and fcap (the key's
-- maxConcurrency, 0: none). Per priority p: fk:<p> (zset of claimable keys -> virtual time), fb:<p> (keys at
-- their cap -> virtual time); per key fq:<p>:<key> (zset id->score, FIFO) and fs:<key> (hash: n<p> ready
-- tasks, h leases held, cap, w weight, blk 1 at its cap, l<p> its next virtual time); fvt (hash p->where
-- the level's last key left it), fkeys (keys tracked), fbn (ready tasks of keys at their cap: nobody can
-- claim them now), fver (set once the pool's older tasks are filed).
local P = KEYS[1]
local PRIO_UNIT = 1099511627776  -- a ready score is priority * 2^40 + seq
local MAX_KEYS = 10000  -- codeforge.api.limits.MAX_FAIR_KEYS
local OVERFLOW = '\1overflow'  -- codeforge.queue.base.OVERFLOW_KEY: keys past MAX_KEYS share it
local MAX_RESULT = 524288  -- codeforge.api.limits.MAX_RESULT_BYTES: complete.lua stores no larger result

local function num(v) return tonumber(v or '0') or 0 end

-- The script's clock, read once (TIME) and kept: every stamp and fence of one script call shares it.
local NOW_US = nil

local function now_ms()
  local t = redis.call('TIME')
  NOW_US = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The task's next fencing token: max(old + 1, server time in microseconds). A fence issued after a restart
-- or a failover is greater than every fence issued before it even when Redis lost the task's hash or its
-- last writes (the clock moved on meanwhile), so two holders never share one. About 1.8e15: exact in Lua's
-- doubles (< 2^53) and stored as a plain integer string; compared as numbers.
local function fence_after(old)
  if not NOW_US then now_ms() end
  local fence = NOW_US
  old = tonumber(old or '0') or 0
  if old + 1 > fence then fence = old + 1 end
  return string.format('%.0f', fence)
end

local function next_fence(tk)
  local fence = fence_after(redis.call('HGET', tk, 'fence'))
  redis.call('HSET', tk, 'fence', fence)
  return fence
end

-- Ready tasks nobody is kept from claiming (those of keys at their cap are not).
local function claimable()
  return redis.call('ZCARD', P .. 'ready') - num(redis.call('GET', P .. 'fbn'))
end

-- The task ended at `now`: record its state and when, and tell the waiters. `info`: its attempts, consumer,
-- clm and rdy fields when the caller read them already.
local function publish_done(tk, id, state, err, result, now, info)
  info = info or redis.call('HMGET', tk, 'attempts', 'consumer', 'clm', 'rdy')
  -- Claimed since it last became ready: an agent held it from clm until now (its busy time).
  local run = ''
  local clm, rdy = tonumber(info[3] or ''), tonumber(info[4] or '0') or 0
  if clm and clm >= rdy then run = now - clm end
  redis.call('PUBLISH', P .. 'done', id .. '\0' .. state .. '\0' .. (info[1] or '0') .. '\0' .. (info[2] or '')
    .. '\0' .. now .. '\0' .. run .. '\0' .. (err or '') .. '\0' .. (result or ''))
end

-- Fair share: strict priority across levels; within one, the claimable key with the lowest virtual time is
-- served and its time moves on by 1/weight (start-time fair queueing: equal weights take turns, ties by key
-- name), FIFO within a key. A key holding `cap` leases moves to fb:<p> until one ends. All O(log n).
local function fq(p, key) return P .. 'fq:' .. p .. ':' .. key end
local function fs(key) return P .. 'fs:' .. key end

-- The level's virtual time: that of the task it served last.
local function vnow(p) return num(redis.call('HGET', P .. 'fvt', p)) end

local function key_state(key, p)
  local s = redis.call('HMGET', fs(key), 'n1', 'n2', 'n3', 'n4', 'h', 'cap', 'blk', 'w', 'l' .. (p or 1))
  return {n = {num(s[1]), num(s[2]), num(s[3]), num(s[4])}, h = num(s[5]), cap = num(s[6]), blk = s[7] == '1',
    known = s[8] ~= false, w = num(s[8]), last = num(s[9])}
end

-- After a change of the key's leases, cap or ready tasks: forget it when idle, or move it between the
-- claimable and the blocked sets when its leases reached (or left) its cap. True when it became claimable.
local function settle_key(key, st)
  local ready = st.n[1] + st.n[2] + st.n[3] + st.n[4]
  if st.h <= 0 and ready <= 0 then
    if redis.call('DEL', fs(key)) == 1 then redis.call('DECR', P .. 'fkeys') end
    return false
  end
  local block = st.cap > 0 and st.h >= st.cap
  if block == st.blk then return false end
  st.blk = block
  redis.call('HSET', fs(key), 'blk', block and 1 or 0)
  redis.call(block and 'INCRBY' or 'DECRBY', P .. 'fbn', ready)
  local from, to = 'fk:', 'fb:'
  if not block then from, to = 'fb:', 'fk:' end
  for p = 1, 4 do
    if st.n[p] > 0 then
      local vt = redis.call('ZSCORE', P .. from .. p, key)
      if vt then
        redis.call('ZREM', P .. from .. p, key)
        vt = tonumber(vt)
        if not block then vt = math.max(vt, vnow(p)) end
        redis.call('ZADD', P .. to .. p, vt, key)
      end
    end
  end
  return not block and ready > 0
end

-- The task joins the ready set and its key's FIFO; a key new to the level joins at the later of its own next
-- virtual time and the level's (an idle key banks no turns). The key's cap and weight are its latest
-- ready task's (Workflows sharing a key should agree). True when the pool did not track the key before.
local function add_ready(tk, id, score, key, cap, w)
  local p = math.floor(score / PRIO_UNIT)
  redis.call('ZADD', P .. 'ready', score, id)
  if redis.call('ZADD', fq(p, key), score, id) == 0 then return false end
  local st = key_state(key, p)
  if not st.known then redis.call('INCR', P .. 'fkeys') end
  st.n[p] = st.n[p] + 1
  w = math.max(w, 1)
  if st.cap ~= cap or st.w ~= w then
    redis.call('HSET', fs(key), 'n' .. p, st.n[p], 'cap', cap, 'w', w)
  else
    redis.call('HSET', fs(key), 'n' .. p, st.n[p])
  end
  st.cap = cap
  if st.blk then redis.call('INCR', P .. 'fbn') end
  if st.n[p] == 1 then
    redis.call('ZADD', P .. (st.blk and 'fb:' or 'fk:') .. p, math.max(st.last, vnow(p)), key)
  end
  settle_key(key, st)
  return not st.known
end

-- `since`: when it became claimable (ms); queue-wait metrics count from there.
local function to_ready(tk, id, since)
  redis.call('HSET', tk, 'state', 'queued', 'consumer', '', 'rdy', since, 'clm', '')
  local t = redis.call('HMGET', tk, 'score', 'fk', 'fcap', 'fw')
  add_ready(tk, id, tonumber(t[1]), t[2] or '', num(t[3]), num(t[4]))
end

-- Take a queued task out of the ready set (a cancel); false when it was not there.
local function drop_ready(tk, id)
  if redis.call('ZREM', P .. 'ready', id) == 0 then return false end
  local t = redis.call('HMGET', tk, 'score', 'fk')
  local p, key = math.floor(tonumber(t[1]) / PRIO_UNIT), t[2] or ''
  if redis.call('ZREM', fq(p, key), id) == 0 then return true end
  local st = key_state(key, p)
  st.n[p] = st.n[p] - 1
  redis.call('HSET', fs(key), 'n' .. p, st.n[p])
  if st.blk then redis.call('DECR', P .. 'fbn') end
  if st.n[p] <= 0 then
    redis.call('ZREM', P .. 'fk:' .. p, key)
    redis.call('ZREM', P .. 'fb:' .. p, key)
  end
  settle_key(key, st)
  return true
end

-- Up to `want` tasks to claim, all of one key: the most urgent level with a claimable key, its key with the
-- lowest virtual time, that key's oldest tasks, as many in a row as the key would be served before the
-- runner-up's turn (and its cap allows). Their leases count against the key from now on.
-- Tasks queued before fair share existed sit in `ready` only: file them under their key once (checked by
-- enqueue and reap, and by a claim that finds ready tasks but no key to serve).
local function migrate()
  if redis.call('EXISTS', P .. 'fver') == 1 then return false end
  local ids = redis.call('ZRANGE', P .. 'ready', 0, -1)
  redis.call('DEL', P .. 'ready')
  for _, id in ipairs(ids) do
    local tk = P .. 't:' .. id
    local t = redis.call('HMGET', tk, 'score', 'fk', 'fcap', 'fw')
    add_ready(tk, id, tonumber(t[1]), t[2] or '', num(t[3]), num(t[4]))
  end
  redis.call('SET', P .. 'fver', 1)
  return #ids > 0
end

-- A ready entry no codeforge client filed: no task behind it, or filed under no key's line (a foreign ZADD).
-- Such entries are taken out when one heads `ready` and no key can be served, at most UNFILED_PER_CALL per
-- script call so that any number of them costs a bounded time; until then they count as ready.
local UNFILED_PER_CALL = 100
local unfiled_dropped = 0

local function drop_unfiled(id)
  if unfiled_dropped >= UNFILED_PER_CALL then return false end
  local t = redis.call('HMGET', P .. 't:' .. id, 'score', 'fk')
  local score = tonumber(t[1] or '')
  if score and redis.call('ZSCORE', fq(math.floor(score / PRIO_UNIT), t[2] or ''), id) then return false end
  redis.call('ZREM', P .. 'ready', id)
  unfiled_dropped = unfiled_dropped + 1
  return true
end

local pick
pick = function(want)
  -- The most urgent ready task's level: no level above it has tasks, so none is looked at.
  local head = redis.call('ZRANGE', P .. 'ready', 0, 0, 'WITHSCORES')
  if not head[1] then return {} end
  for p = math.floor(tonumber(head[2]) / PRIO_UNIT), 4 do
    local top = redis.call('ZRANGE', P .. 'fk:' .. p, 0, 1, 'WITHSCORES')
    if top[1] then
      local key, vt = top[1], tonumber(top[2])
      local st = key_state(key, p)
      local w = math.max(st.w, 1)
      local count = math.min(want, st.n[p])
      if top[3] then count = math.min(count, math.max(1, math.ceil((tonumber(top[4]) - vt) * w - 1e-9))) end
      if st.cap > 0 then count = math.min(count, st.cap - st.h) end
      -- Only what add_ready filed counts (in `ready` too), and only a task behind it is leased: entries no
      -- codeforge client wrote (a FIFO entry not ready, a ready one whose hash is gone or is no task's) are
      -- dropped here, so they neither skew the key's counts nor turn into half a task.
      local popped = redis.call('ZPOPMIN', fq(p, key), math.max(count, 1))
      local ids, infos, filed = {}, {}, 0
      for i = 1, #popped, 2 do
        local id = popped[i]
        if redis.call('ZREM', P .. 'ready', id) == 1 then
          filed = filed + 1
          local info = redis.call('HMGET', P .. 't:' .. id, 'lease', 'data', 'rdy', 'enq', 'attempts', 'fence')
          if info[2] and tonumber(info[1]) then
            ids[#ids + 1], infos[#infos + 1] = id, info
          end
        end
      end
      count = #ids
      if count == 0 then
        -- The FIFO was empty (listed without tasks: cannot happen) or held only such entries: its count
        -- follows, and the next key is looked at.
        st.n[p] = #popped == 0 and 0 or math.max(st.n[p] - filed, 0)
        redis.call('HSET', fs(key), 'n' .. p, st.n[p])
        if st.n[p] == 0 then redis.call('ZREM', P .. 'fk:' .. p, key) end
        settle_key(key, st)
        return pick(want)
      end
      local nxt = vt + count / w
      st.n[p], st.h = math.max(st.n[p] - filed, 0), st.h + count
      redis.call('HSET', fs(key), 'l' .. p, nxt, 'h', st.h, 'n' .. p, st.n[p])
      redis.call('HSET', P .. 'fvt', p, nxt - 1 / w)
      if st.n[p] > 0 then
        redis.call('ZADD', P .. 'fk:' .. p, nxt, key)
      else
        redis.call('ZREM', P .. 'fk:' .. p, key)
      end
      settle_key(key, st)
      return ids, infos
    end
  end
  -- Ready tasks but no key to serve: keys at their cap, tasks from before fair share (filed now), or an
  -- entry no codeforge client filed at the head (dropped).
  if migrate() or drop_unfiled(head[1]) then return pick(want) end
  return {}, {}
end

-- A lease ended (completed, failed, released, cancelled, expired): one slot of its key frees. True when
-- that made the key claimable again (idle consumers may get its waiting tasks). `key`: the task's fk when
-- the caller read it already.
local function end_lease(tk, id, key)
  if redis.call('ZREM', P .. 'inflight', id) == 0 then return false end
  key = key or redis.call('HGET', tk, 'fk') or ''
  local st = key_state(key)
  if not st.known then return false end  -- claimed before fair share existed
  st.h = st.h - 1
  redis.call('HSET', fs(key), 'h', st.h)
  return settle_key(key, st)
end

-- The consumer field stays: it names the agent that finished the task (or held it last).
local function finish(tk, id, state, err, result, ttl, now, info)
  redis.call('HSET', tk, 'state', state, 'error', err or '', 'result', result or '', 'fin', now)
  redis.call('EXPIRE', tk, ttl)
  publish_done(tk, id, state, err, result, now, info)
end

-- Two budgets: handler failures spend max_attempts, agent deaths (lost leases) their own, so dying nodes
-- never use up a step's retries; a dead letter's error ends with the one that ran out.
local LOST_BACKOFF_CAP_MS = 60000  -- codeforge.api.task.LOST_LEASE_BACKOFF_CAP_SECONDS

local function requeue(tk, id, err, now, delay_ms)
  redis.call('HSET', tk, 'error', err)
  if delay_ms > 0 then
    redis.call('HSET', tk, 'state', 'queued', 'consumer', '', 'rdy', now + delay_ms, 'clm', '')
    redis.call('ZADD', P .. 'delayed', now + delay_ms, id)
  else
    to_ready(tk, id, now)
  end
  return 'queued'
end

local function bury(tk, id, err, now)
  redis.call('HSET', tk, 'state', 'dead', 'error', err, 'fin', now)
  redis.call('ZADD', P .. 'dead', now, id)
  publish_done(tk, id, 'dead', err, nil, now)
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
    local info = redis.call('HMGET', tk, 'hold', 'lease', 'attempts', 'state')
    if not info[4] then
      -- No task behind the lease (no codeforge client files one without its hash): only the entry goes.
      redis.call('ZREM', P .. 'inflight', id)
    else
      end_lease(tk, id)
      next_fence(tk)
      lose_lease(tk, id, 'lease expired after ' .. ((tonumber(info[1] or info[2]) or 0) / 1000)
        .. 's without a heartbeat (delivery ' .. (info[3] or '?') .. ')', now, true)
    end
  end
  return #ids
end

local function promote(now, limit)
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #due, 2 do
    redis.call('ZREM', P .. 'delayed', due[i])
    local tk = P .. 't:' .. due[i]
    -- Without its hash (no codeforge client delays a task it did not file) the entry only goes.
    if redis.call('HEXISTS', tk, 'state') == 1 then
      to_ready(tk, due[i], due[i + 1])  -- claimable since it was due, not since this claim
    end
  end
  return #due / 2
end

-- Lease one picked task to `consumer` for `hold_ms` (0: the task's own lease); `info`: its lease, data, rdy,
-- enq, attempts and fence fields, as pick read them. Returns the claim reply's six fields: id, data,
-- attempts, fence, expiry ms, ms it waited ready (tasks queued before 'rdy' existed count from their enqueue).
local function lease(id, info, consumer, hold_ms, now)
  local tk = P .. 't:' .. id
  local attempts = num(info[5]) + 1
  local fence = fence_after(info[6])
  local hold = hold_ms
  if hold <= 0 then hold = tonumber(info[1]) end
  local exp = now + hold
  redis.call('HSET', tk, 'state', 'running', 'consumer', consumer, 'exp', exp, 'hold', hold, 'clm', now,
    'attempts', attempts, 'fence', fence)
  redis.call('ZADD', P .. 'inflight', exp, id)
  return {id, info[2], attempts, fence, exp, math.max(now - (tonumber(info[3] or info[4] or '') or now), 0)}
end

-- Up to `want` tasks in fair-share order leased to `consumer`, their fields appended to `out`; how many.
local function take(out, want, consumer, hold_ms, now)
  local got = 0
  while got < want do
    local ids, infos = pick(want - got)
    if #ids == 0 then break end
    got = got + #ids
    for i, id in ipairs(ids) do
      for _, v in ipairs(lease(id, infos[i], consumer, hold_ms, now)) do out[#out + 1] = v end
    end
  end
  return got
end

-- Handover (README, "Handover"): a consumer blocked in a claim is registered in `idle` as
-- "max|lease_ms|consumer" until its wait ends. Whatever makes tasks claimable (enqueue, a freed slot, a
-- requeue) leases them to idle consumers right here, in fair-share order, and pushes each one's leases to
-- its own list h:<consumer>, so its blocking pop returns tasks it already holds: one round trip, no claim.
-- Busy consumers claim as before. The registration whose wait ends first goes first (for equal waits, the
-- consumer waiting longest): it is blocked in its pop by now, while the latest one may still be on its way
-- there (its claim's reply, an fsync, its process's turn), which a task handed to it would wait for.
-- Registrations ending within HAND_MARGIN_MS are passed over while others are left (a lease that arrives
-- as a pop times out costs that consumer one more claim call); ended ones are never handed to.
local HAND_TTL_MS = 60000  -- a dead consumer's list outlives its wait this long (its leases expire anyway)
local HAND_MARGIN_MS = 100

-- The registration to hand to next, taken out of `idle`: its member, wait end (ms), consumer, how many tasks
-- it takes and its lease ms; nil when no consumer is waiting. Registrations whose wait has ended are dropped
-- when they would be picked (when no other is left), so a handover to a live one costs nothing more; so is
-- a member no codeforge client wrote (not "max|lease_ms|consumer"), and the next one is tried.
local function next_idle(now)
  while true do
    local top = redis.call('ZRANGEBYSCORE', P .. 'idle', now + HAND_MARGIN_MS, '+inf', 'WITHSCORES',
      'LIMIT', 0, 1)
    if not top[1] then
      top = redis.call('ZRANGE', P .. 'idle', -1, -1, 'WITHSCORES')
      if not top[1] then return nil end
      if tonumber(top[2]) <= now then  -- the latest wait has ended, so has every other
        redis.call('ZREMRANGEBYSCORE', P .. 'idle', '-inf', now)
        return nil
      end
    end
    redis.call('ZREM', P .. 'idle', top[1])
    local member = top[1]
    local a = string.find(member, '|', 1, true)
    local b = a and string.find(member, '|', a + 1, true)
    local want = b and tonumber(string.sub(member, 1, a - 1))
    local hold = want and tonumber(string.sub(member, a + 1, b - 1))
    if hold and want >= 1 and want < math.huge and hold >= 0 and hold < math.huge and b < #member then
      return member, tonumber(top[2]), string.sub(member, b + 1), want, hold
    end
  end
end

-- Push leases (the claim reply's fields, `out`) to the consumer's list for its blocking pop.
local function push_handed(consumer, out, until_ms, now)
  local hk = P .. 'h:' .. consumer
  redis.call('RPUSH', hk, table.concat(out, '\0'))
  redis.call('PEXPIRE', hk, until_ms - now + HAND_TTL_MS)
end

local function hand_out(now)
  if redis.call('EXISTS', P .. 'idle') == 0 then return end
  local left = claimable()
  if left <= 0 then return end
  while left > 0 do
    local member, until_ms, consumer, want, hold = next_idle(now)
    if not member then return end
    local out = {}
    local got = take(out, want, consumer, hold, now)
    if got == 0 then  -- every ready task's key is at its cap: it waits on
      redis.call('ZADD', P .. 'idle', until_ms, member)
      return
    end
    push_handed(consumer, out, until_ms, now)
    left = left - got
  end
end

-- nil when the caller still holds the task under `fence`, else why not: gone, cancelled or stale. Second:
-- the fields it read (state, fence, exp, fk, attempts, consumer, clm, rdy, hold, lease), for the caller.
local function check_holder(tk, fence, now)
  local st = redis.call('HMGET', tk, 'state', 'fence', 'exp', 'fk', 'attempts', 'consumer', 'clm', 'rdy',
    'hold', 'lease')
  if not st[1] then return 'gone', st end
  if st[1] == 'cancelled' then return 'cancelled', st end
  if st[1] ~= 'running' or st[2] ~= fence then return 'stale', st end
  if tonumber(st[3]) <= now then
    if reap(now, 100) > 0 then hand_out(now) end
    return 'stale', st
  end
  return nil, st
end
