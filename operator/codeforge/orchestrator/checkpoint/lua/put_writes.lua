-- Store a task's pending writes atomically.
-- KEYS: 1 writes hash of one checkpoint, 2 set of the thread's writes keys
-- ARGV: triples mode ("nx" | "set"), field, packed value
store_writes(KEYS[1], KEYS[2], 1)
return 1
