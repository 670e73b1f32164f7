-- A fleet-wide rate limit (README, "Rate limits and budgets"). KEYS[1] is the key's hash "cf:{rl:<key>}", one
-- Redis Cluster slot of its own (not a pool's: every pool naming the key shares it). Fields:
--   tat    requests: GCRA theoretical arrival time (ms); a request slot is free while tat - now <= tau
--   lvl,ts tokens: bucket level at time ts (ms); refills at tpm/60000 per ms up to a capacity; may go
--          negative (debt) because a call's tokens are known only after it, from the provider's usage
--   avg    tokens per request (moving average): what a slot reserves from the bucket before the call
--   pause  ms until which the key is paused (a provider's 429 Retry-After), for every agent
-- ARGV: op, rpm, tpm, burst_ms, then per op:
--   acquire n       -> {granted, wait_ms, tokens_each, paused(0/1)}: up to n slots free now; when none,
--                      the ms until the next one
--   giveback n each -> {}: n unused slots (a claim found no task) and their reserved tokens go back
--   settle each used-> {}: a finished call reserved `each` tokens and used `used` (-1: unknown, keep `each`)
--   pause ms        -> {ms the key is now paused for}
--   peek            -> {tat, lvl, avg, pause, now}
local K = KEYS[1]
local op = ARGV[1]
local rpm, tpm, burst_ms = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local h = redis.call('HMGET', K, 'tat', 'lvl', 'ts', 'avg', 'pause')
local tat = tonumber(h[1]) or now
if tat < now then tat = now end
local avg = tonumber(h[4]) or 0
local avg_known = h[4] ~= false
local pause = tonumber(h[5]) or 0

-- requests: one slot every T ms, up to B at once (B = the burst window's worth, at least 1)
local T, tau = 0, 0
if rpm > 0 then
  T = 60000 / rpm
  local B = math.max(1, math.floor(rpm * burst_ms / 60000))
  tau = T * (B - 1)
end
-- tokens: rate per ms, capacity = the burst window's worth (at least 1 token)
local rate, cap, lvl = 0, 0, 0
if tpm > 0 then
  rate = tpm / 60000
  cap = math.max(1, tpm * burst_ms / 60000)
  local ts = tonumber(h[3]) or now
  lvl = tonumber(h[2]) or cap
  lvl = math.min(cap, lvl + (now - ts) * rate)
end

local function fmt(x) return string.format('%.3f', x) end

local function save()
  local fields = {'tat', fmt(tat), 'pause', fmt(pause)}
  if avg_known then table.insert(fields, 'avg'); table.insert(fields, fmt(avg)) end
  if tpm > 0 then
    table.insert(fields, 'lvl'); table.insert(fields, fmt(lvl))
    table.insert(fields, 'ts'); table.insert(fields, fmt(now))
  end
  redis.call('HSET', K, unpack(fields))
  -- An idle key is worth nothing after a few burst windows (full bucket, tat in the past): let it go.
  local keep = math.max(tat, pause) - now + 2 * burst_ms + 120000
  redis.call('PEXPIRE', K, math.floor(keep))
end

if op == 'acquire' then
  local n = tonumber(ARGV[5])
  if pause > now then
    return {0, math.ceil(pause - now), 0, 1}
  end
  -- A slot reserves the average call's tokens; the bucket must hold that much (at most its capacity).
  -- Before any call is known a slot reserves the whole bucket: one call at a time until the first settles.
  local each = math.floor(avg + 0.5)
  if tpm > 0 and not avg_known then each = math.ceil(cap) end
  local need = math.max(1, math.min(each, cap))
  local granted = 0
  local wait = 0
  while granted < n do
    if rpm > 0 and tat - now > tau then
      wait = tat - tau - now
      break
    end
    if tpm > 0 and lvl < need then
      wait = math.max(wait, (need - lvl) / rate)
      break
    end
    granted = granted + 1
    if rpm > 0 then tat = tat + T end
    if tpm > 0 then lvl = lvl - each end
  end
  if granted > 0 then
    save()
    wait = 0
  end
  return {granted, math.ceil(wait), each, 0}
elseif op == 'giveback' then
  local n, each = tonumber(ARGV[5]), tonumber(ARGV[6])
  if rpm > 0 then tat = math.max(now, tat - n * T) end
  if tpm > 0 then lvl = math.min(cap, lvl + n * each) end
  save()
  return {}
elseif op == 'settle' then
  local each, used = tonumber(ARGV[5]), tonumber(ARGV[6])
  if used >= 0 then
    if tpm > 0 then lvl = math.min(cap, lvl + each - used) end
    -- The first call sets the average; then each call moves it a fifth of the way.
    if avg_known then avg = avg + (used - avg) / 5 else avg = used end
    avg_known = true
  end
  save()
  return {}
elseif op == 'pause' then
  local until_ms = now + tonumber(ARGV[5])
  if until_ms > pause then pause = until_ms end
  save()
  return {math.ceil(pause - now)}
elseif op == 'peek' then
  return {fmt(tat), fmt(lvl), fmt(avg), fmt(pause), fmt(now)}
end
return redis.error_reply('ratelimit.lua: unknown op ' .. tostring(op))
