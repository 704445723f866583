-- The owner check every settle starts with: the XACK itself. An entry is pending only for the consumer
-- that read it (recovery takes entries by acking them, and nothing else moves an entry between
-- consumers), so "still pending" is "still ours". KEYS[1]: the stream; ARGV[1..2]: group, entry id.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
