-- ARGV: ids. Deletes those of them that are dead letters (their records too). Returns how many went.
local removed = 0
for _, id in ipairs(ARGV) do
  if redis.call('ZREM', P .. 'dead', id) == 1 then
    redis.call('DEL', P .. 't:' .. id)
    removed = removed + 1
  end
end
return removed
