-- Shared helpers, prepended to every script. KEYS[1] is the pool's key prefix "cf:{pool}:"; every key a
-- script touches starts with it, so all of them hash to one Redis Cluster slot.
-- Keys: ready (zset id->priority*2^40+seq), wake (list of wake-up tokens), seq (counter),
-- inflight (zset id->lease expiry ms), delayed (zset id->due ms), dead (zset id->buried ms),
-- t:<id> (hash: data state attempts fence max lease score enq exp consumer result error, and for the two
-- budgets: fails (retryable handler failures), lost (lost leases), maxlost, lostbk (backoff ms), hold (this
-- claim's lease ms); for the metrics, all by the server's clock: rdy (ms it last became ready to claim), clm
-- (ms of its last claim), fin (ms it ended)),
-- consumers (hash consumer->"state|until_ms");
-- channel done: "id\0state\0attempts\0consumer\0fin_ms\0run_ms\0error\0result" (run_ms: claim -> end of
-- the delivery that ended it, empty when it ended unclaimed).
local P = KEYS[1]
local WAKE_CAP = 10000

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
  local want = redis.call('ZCARD', P .. 'ready')
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

-- The task ended at `now` (its state set already): record when, and tell the waiters.
local function publish_done(tk, id, state, err, result, now)
  local info = redis.call('HMGET', tk, 'attempts', 'consumer', 'clm', 'rdy', 'state')
  redis.call('HSET', tk, 'fin', now)
  -- Claimed since it last became ready: an agent held it from clm until now (its busy time).
  local run = ''
  local clm, rdy = tonumber(info[3] or ''), tonumber(info[4] or '0') or 0
  if clm and clm >= rdy then run = now - clm end
  redis.call('PUBLISH', P .. 'done', id .. '\0' .. state .. '\0' .. (info[1] or '0') .. '\0' .. (info[2] or '')
    .. '\0' .. now .. '\0' .. run .. '\0' .. (err or '') .. '\0' .. (result or ''))
end

-- `since`: when it became claimable (ms); queue-wait metrics count from there.
local function to_ready(tk, id, since)
  redis.call('HSET', tk, 'state', 'queued', 'consumer', '', 'rdy', since)
  redis.call('ZADD', P .. 'ready', redis.call('HGET', tk, 'score'), id)
end

-- The consumer field stays: it names the agent that finished the task (or held it last).
local function finish(tk, id, state, err, result, ttl, now)
  redis.call('HSET', tk, 'state', state, 'error', err or '', 'result', result or '')
  redis.call('EXPIRE', tk, ttl)
  publish_done(tk, id, state, err, result, now)
end

-- Two budgets: handler failures spend max_attempts, agent deaths (lost leases) their own, so dying nodes
-- never use up a step's retries; a dead letter's error ends with the one that ran out.
local LOST_BACKOFF_CAP_MS = 60000  -- codeforge.api.task.LOST_LEASE_BACKOFF_CAP_SECONDS

local function requeue(tk, id, err, now, delay_ms)
  redis.call('HSET', tk, 'error', err)
  if delay_ms > 0 then
    redis.call('HSET', tk, 'state', 'queued', 'consumer', '', 'rdy', now + delay_ms)
    redis.call('ZADD', P .. 'delayed', now + delay_ms, id)
  else
    to_ready(tk, id, now)
  end
  return 'queued'
end

local function bury(tk, id, err, now)
  redis.call('HSET', tk, 'state', 'dead', 'error', err)
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
    redis.call('ZREM', P .. 'inflight', id)
    next_fence(tk)
    local info = redis.call('HMGET', tk, 'hold', 'lease', 'attempts')
    lose_lease(tk, id, 'lease expired after ' .. (tonumber(info[1] or info[2]) / 1000) .. 's without a heartbeat'
      .. ' (delivery ' .. info[3] .. ')', now, true)
  end
  return #ids
end

local function promote(now, limit)
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #due, 2 do
    redis.call('ZREM', P .. 'delayed', due[i])
    to_ready(P .. 't:' .. due[i], due[i], due[i + 1])  -- claimable since it was due, not since this claim
  end
  return #due / 2
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
