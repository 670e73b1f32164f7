-- Store writes of tasks (the prelude of put_writes and put_checkpoint). Regular writes keep the first value
-- (a replayed task must not change what was recorded); special writes (errors, interrupts: negative index)
-- are replaced. `hash` is one checkpoint's writes hash, `index` the thread's set of writes hashes, ARGV from
-- `first` on: triples mode ("nx" | "set"), field, packed value.
local function store_writes(hash, index, first)
  redis.call('SADD', index, hash)
  for i = first, #ARGV, 3 do
    if ARGV[i] == 'nx' then
      redis.call('HSETNX', hash, ARGV[i + 1], ARGV[i + 2])
    else
      redis.call('HSET', hash, ARGV[i + 1], ARGV[i + 2])
    end
  end
end
