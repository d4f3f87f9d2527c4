-- One cache write outside the assign script, for Redis Cluster (where a
-- script may only touch keys of one slot). Idempotent, like the script.
--
-- KEYS[1]  MSG_CACHE:<conv>:<seq>  or  SEQ_USER_READ:<conv>:<user>
-- ARGV[1]  'cache': set field value to ARGV[2]
--          'read':  raise field value to ARGV[2] (max-only, a decimal)
-- ARGV[3]  TTL, s (applied when the key was written)
if ARGV[1] == 'read' then
  local cur = tonumber(redis.call('HGET', KEYS[1], 'value') or '0') or 0
  if cur >= tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], 'value', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
