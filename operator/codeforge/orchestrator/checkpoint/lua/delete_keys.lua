-- Delete every key of one thread at once (the caller lists them; all share the thread's hash tag).
return redis.call('DEL', unpack(KEYS))
