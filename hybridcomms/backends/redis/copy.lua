-- Any client of the server can write to these keys: the scripts read what they find as untrusted.
-- `copy` appends an entry's fields to an XADD: each of ours once, and at most 32 others (an entry with
-- thousands of fields must not overflow `unpack`). A script that has written once is not stopped by
-- maxmemory (Redis does not stop a script half-way), so a move frees its source before it adds.
local KNOWN = {m = true, a = true, id = true, t = true, k = true, d = true, e = true, r = true}
local function copy(args, flat, skip)
  local seen, others = {}, 0
  for j = 1, #flat - 1, 2 do
    local name = flat[j]
    if not skip[name] then
      if KNOWN[name] then
        if not seen[name] then
          seen[name] = true
          args[#args + 1] = name; args[#args + 1] = flat[j + 1]
        end
      elseif others < 32 then
        others = others + 1
        args[#args + 1] = name; args[#args + 1] = flat[j + 1]
      end
    end
  end
  return args
end
local function failed(res) return type(res) == 'table' and res.err ~= nil end
