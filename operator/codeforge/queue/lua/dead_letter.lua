-- ARGV: id. A dead letter's fields: {died_ms, data, attempts, error, consumer, fails, lost}, or {} when the
-- task is not in the dead-letter queue.
local died = redis.call('ZSCORE', P .. 'dead', ARGV[1])
if not died then return {} end
local f = redis.call('HMGET', P .. 't:' .. ARGV[1], 'data', 'attempts', 'error', 'consumer', 'fails', 'lost')
return {died, f[1] or '', f[2] or '0', f[3] or '', f[4] or '', f[5] or '0', f[6] or '0'}
