-- (after copy.lua, free_token.lua) KEYS: the four streams, delayed, delayed:data, dead.
-- ARGV: group, min idle ms, max attempts, batch, now ms (for due times), reason prefix, delays (ms)...
-- Returns {returned ids..., '|', dead ids...}. An entry that cannot be read (no message, an attempt
-- count that is not a count) goes to the dead letters with what it held: never only deleted.
local RANKS = {'0C', '1H', '2M', '3L'}
local returned, dead = {}, {}
-- A producer's field as text of a reason, or nil: a JSON reader (Python's) refuses a reason holding
-- bytes that are not UTF-8 (cjson copies them as they are), so such a field is left out.
local function text(s)
  if type(s) ~= 'string' then return nil end
  local i, n = 1, #s
  while i <= n do
    local c, len, lo, hi = string.byte(s, i), 1, 0x80, 0xBF
    if c >= 0x80 then
      if c >= 0xC2 and c <= 0xDF then len = 2
      elseif c >= 0xE0 and c <= 0xEF then len = 3
        if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
      elseif c >= 0xF0 and c <= 0xF4 then len = 4
        if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
      else return nil end
      for j = i + 1, i + len - 1 do
        local d = string.byte(s, j)
        if d == nil or d < lo or d > hi then return nil end
        lo, hi = 0x80, 0xBF
      end
    end
    i = i + len
  end
  return s
end
local maxa = tonumber(ARGV[3])
local now = tonumber(ARGV[5])
for i = 1, 4 do
  local pend = redis.call('XPENDING', KEYS[i], ARGV[1], 'IDLE', ARGV[2], '-', '+', ARGV[4])
  for _, p in ipairs(pend) do
    local id, times = p[1], tonumber(p[4])
    local e = redis.call('XRANGE', KEYS[i], id, id)
    redis.call('XACK', KEYS[i], ARGV[1], id)
    if #e > 0 then
      local flat = e[1][2]
      local f = {}
      for j = 1, #flat - 1, 2 do if f[flat[j]] == nil then f[flat[j]] = flat[j + 1] end end
      local bad = nil
      local before = 0
      if f.m == nil then
        bad = 'it has no message (field m)'
      elseif f.a ~= nil then
        if #f.a <= 9 and string.match(f.a, '^%d+$') then before = tonumber(f.a)
        else bad = 'its attempt count (field a) is not a count' end
      end
      local used = before + times
      local msg_id = f.id or id
      if bad ~= nil or used >= maxa then
        local reason
        if bad ~= nil then
          reason = cjson.encode({reason = 'cannot be read: ' .. bad, id = text(f.id), attempts = used})
        else
          local last = cjson.null
          if f.e then
            local ok, kept = pcall(cjson.decode, f.e)
            if ok and type(kept) == 'table' and text(kept.error) then last = kept.error end
          end
          reason = cjson.encode({reason = ARGV[6] .. ' during attempt ' .. used .. ' of ' .. maxa,
            last_error = last, id = text(f.id), topic = text(f.t), attempts = used})
        end
        redis.call(unpack(copy({'XADD', KEYS[7], '*', 'a', tostring(used), 'r', reason, 'k', RANKS[i]}, flat,
          {a = true, e = true, r = true, k = true})))
        table.insert(dead, msg_id)
      else
        local delay = tonumber(ARGV[6 + math.min(used, #ARGV - 6)])
        local due = now + delay
        local tok = free_token(KEYS[6], id .. ':' .. RANKS[i] .. ':' .. used)
        local entry = {k = i, m = f.m, a = used, id = f.id or '', t = f.t or '', r = RANKS[i], d = due}
        if f.e then entry.e = f.e end
        redis.call('HSET', KEYS[6], tok, cjson.encode(entry))
        redis.call('ZADD', KEYS[5], tostring(due), tok)
        table.insert(returned, msg_id)
      end
    end
    redis.call('XDEL', KEYS[i], id)
  end
end
table.insert(returned, '|')
for _, v in ipairs(dead) do table.insert(returned, v) end
return returned
