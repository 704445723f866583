-- (after copy.lua, owned.lua) KEYS: stream, dead. ARGV: group, entry id, consumer, reason json,
-- attempts, rank.
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #e > 0 then
  redis.call(unpack(copy({'XADD', KEYS[2], '*', 'a', ARGV[5], 'r', ARGV[4], 'k', ARGV[6]}, e[1][2],
    {a = true, e = true, r = true, k = true})))
end
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
