-- Store a task's pending writes atomically. Regular writes keep the first value (a replayed task must not
-- change what was recorded); special writes (errors, interrupts: negative index) are replaced.
-- KEYS: 1 writes hash of one checkpoint, 2 set of the thread's writes keys
-- ARGV: triples mode ("nx" | "set"), field, packed value
redis.call('SADD', KEYS[2], KEYS[1])
for i = 1, #ARGV, 3 do
  if ARGV[i] == 'nx' then
    redis.call('HSETNX', KEYS[1], ARGV[i + 1], ARGV[i + 2])
  else
    redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 2])
  end
end
return 1
