-- A token of the delayed set that no other entry holds: ``base``, else ``base:2``, ``base:3``... An
-- HSET on a token in use would overwrite a waiting entry, which is then lost without a dead letter.
local function free_token(data, base)
  local tok, n = base, 1
  while redis.call('HEXISTS', data, tok) == 1 do
    n = n + 1
    tok = base .. ':' .. n
  end
  return tok
end
