-- Counts without reading a message: KEYS: the four streams, delayed, done, dead. ARGV: group, now ms.
-- Returns {new, oldest new (ms, -1: none), processing, oldest processing, not due yet, done, oldest
-- done, dead, oldest dead}. The waiting count is the group's ``lag`` (Redis 7), else the length less
-- the pending entries.
local LIMIT = 253402300799999
local function ms(id)
  local v = tonumber(string.match(id, '^(%d+)'))
  if v == nil then return -1 end
  return math.min(v, LIMIT)
end
local function older(a, b) if b >= 0 and (a < 0 or b < a) then return b end return a end
local function stream(k) return redis.call('TYPE', k)['ok'] == 'stream' end
local function first(k, start)
  local r = redis.call('XRANGE', k, start, '+', 'COUNT', 1)
  if #r > 0 then return ms(r[1][1]) end
  return -1
end
local new, old_new, proc, old_proc = 0, -1, 0, -1
for i = 1, 4 do
  if stream(KEYS[i]) then
    local len = redis.call('XLEN', KEYS[i])
    local group = nil
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
      local h = {}
      for j = 1, #g - 1, 2 do h[g[j]] = g[j + 1] end
      if h['name'] == ARGV[1] then group = h end
    end
    local last, pending = '0-0', 0
    if group then
      last = group['last-delivered-id']
      local summary = redis.call('XPENDING', KEYS[i], ARGV[1])
      pending = summary[1]
      if pending > 0 then old_proc = older(old_proc, ms(summary[2])) end
    end
    proc = proc + pending
    local waiting = math.max(len - pending, 0)
    if group and type(group['lag']) == 'number' then waiting = group['lag'] end
    new = new + waiting
    if waiting > 0 then
      local start = '-'
      if last ~= '0-0' then start = '(' .. last end
      old_new = older(old_new, first(KEYS[i], start))
    end
  end
end
local not_due = 0
if redis.call('TYPE', KEYS[5])['ok'] == 'zset' then
  new = new + redis.call('ZCARD', KEYS[5])
  not_due = redis.call('ZCOUNT', KEYS[5], '(' .. ARGV[2], '+inf')
  for _, tok in ipairs(redis.call('ZRANGE', KEYS[5], 0, 99999)) do old_new = older(old_new, ms(tok)) end
end
local out = {new, old_new, proc, old_proc, not_due}
for i = 6, 7 do
  if stream(KEYS[i]) then
    out[#out + 1] = redis.call('XLEN', KEYS[i]); out[#out + 1] = first(KEYS[i], '-')
  else
    out[#out + 1] = 0; out[#out + 1] = -1
  end
end
return out
