-- Store one checkpoint atomically: its record, its index entry, its namespace and its new channel blobs, and
-- with them the held writes of its parent checkpoint (checkpoint/pending.py), if any.
-- KEYS: 1 records hash, 2 index zset, 3 blobs hash, 4 namespaces set, and with writes: 5 the parent's writes
-- hash, 6 the set of the thread's writes keys (all share the thread's hash tag)
-- ARGV: 1 namespace, 2 checkpoint id, 3 packed record, 4 number of blobs, then blob field/value pairs, then
-- the writes' triples (writes.lua)
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
local after = 5 + 2 * tonumber(ARGV[4])
for i = 5, after - 1, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
if #KEYS > 4 then
  store_writes(KEYS[5], KEYS[6], after)
end
return 1
