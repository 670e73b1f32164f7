-- Store one checkpoint atomically: its record, its index entry, its namespace and its new channel blobs, and
-- with them the held writes of its parent checkpoint (checkpoint/pending.py), if any; on one server, the
-- thread's first checkpoint also registers the thread (on a cluster the registry is in another slot).
-- KEYS: 1 records hash, 2 index zset, 3 blobs hash, 4 namespaces set, and with writes: 5 the parent's writes
-- hash, 6 the set of the thread's writes keys (all share the thread's hash tag); last, when ARGV[5] is not
-- empty, the registry of threads
-- ARGV: 1 namespace, 2 checkpoint id, 3 packed record, 4 number of blobs, 5 the thread id to register or '',
-- then blob field/value pairs, then the writes' triples (writes.lua)
local keys = #KEYS
if ARGV[5] ~= '' then
  redis.call('SADD', KEYS[keys], ARGV[5])
  keys = keys - 1
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
local after = 6 + 2 * tonumber(ARGV[4])
for i = 6, after - 1, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
if keys > 4 then
  store_writes(KEYS[5], KEYS[6], after)
end
return 1
