-- (after free_token.lua, owned.lua) KEYS: stream, delayed, delayed:data.
-- ARGV: group, entry id, consumer, due ms, token, packed entry.
redis.call('XDEL', KEYS[1], ARGV[2])
local tok = free_token(KEYS[3], ARGV[5])
redis.call('HSET', KEYS[3], tok, ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[4], tok)
return 1
