-- Store one checkpoint atomically: its record, its index entry, its namespace and its new channel blobs.
-- KEYS: 1 records hash, 2 index zset, 3 blobs hash, 4 namespaces set (all share the thread's hash tag)
-- ARGV: 1 namespace, 2 checkpoint id, 3 packed record, then blob field/value pairs
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
return 1
