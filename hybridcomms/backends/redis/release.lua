-- (after copy.lua, owned.lua) Puts an entry of a blocking read that came with a better one back into
-- its stream. KEYS: stream. ARGV: group, entry id, consumer.
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if #e > 0 then redis.call(unpack(copy({'XADD', KEYS[1], '*'}, e[1][2], {}))) end
return 1
