-- (after copy.lua) KEYS: the four streams (priority order), delayed, delayed:data, dead.
-- ARGV: group, consumer. Returns {rank index, entry id, fields} or {0, next delayed due in ms or -1}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local RANKS = {'0C', '1H', '2M', '3L'}
local function whole(v)
  return type(v) == 'number' and v == v and v >= 0 and v < 1e15 and math.floor(v) == v
end
local function str(v, default) if type(v) == 'string' then return v end return default end
local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 100)
for _, tok in ipairs(due) do
  local packed = redis.call('HGET', KEYS[6], tok)
  if packed then
    local ok, e = pcall(cjson.decode, packed)
    local args
    if ok and type(e) == 'table' and type(e.m) == 'string' and (e.k == 1 or e.k == 2 or e.k == 3 or e.k == 4)
        and whole(e.a) and (e.d == nil or whole(e.d)) then
      args = {'XADD', KEYS[e.k], '*', 'm', e.m, 'a', string.format('%d', e.a), 'id', str(e.id, ''),
        't', str(e.t, ''), 'k', RANKS[e.k], 'd', string.format('%d', e.d or now)}
      if type(e.e) == 'string' then args[#args + 1] = 'e'; args[#args + 1] = e.e end
    else  -- not an entry this code wrote: to the dead letters, as it is
      args = {'XADD', KEYS[7], '*', 'm', packed, 'a', '0', 'k', '2M',
        'r', cjson.encode({reason = 'cannot be read: a delayed entry that is not a message', attempts = 0})}
    end
    redis.call('HDEL', KEYS[6], tok)
    if failed(redis.pcall(unpack(args))) then
      redis.call('HSET', KEYS[6], tok, packed)  -- kept: tried again by the next claim
      break
    end
  end
  redis.call('ZREM', KEYS[5], tok)
end
for i = 1, 4 do
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[i], '>')
  if r then
    local entry = r[1][2][1]
    return {i, entry[1], entry[2]}
  end
end
local nxt = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
if #nxt > 0 then return {0, nxt[2]} end
return {0, '-1'}
