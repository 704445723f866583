-- (after copy.lua, owned.lua) KEYS: stream, done. ARGV: group, entry id, consumer, done maxlen
-- (-1: no limit), attempts. The copy into ``done`` is for inspection: if it cannot be written, the ack
-- still holds.
if tonumber(ARGV[4]) == 0 then
  redis.call('XDEL', KEYS[1], ARGV[2])
  return 1
end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if #e > 0 then
  local head = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'a', ARGV[5]}
  if tonumber(ARGV[4]) < 0 then head = {'XADD', KEYS[2], '*', 'a', ARGV[5]} end
  redis.pcall(unpack(copy(head, e[1][2], {a = true, e = true})))
end
return 1
