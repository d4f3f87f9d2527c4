-- Dedup, seq allocation, message cache and sender read seqs for one batch of
-- one conversation, in one atomic step (see src/cache/mod.rs for the Rust
-- side and the protocol around refills).
--
-- KEYS[1]  MALLOC_SEQ:<conv>                hash CURR, LAST, TIME, LOCK (OpenIM's)
-- KEYS[2]  {MALLOC_SEQ:<conv>}:DEDUP:<e>    hash clientMsgID -> seq, epoch e (now)
-- KEYS[3]  {MALLOC_SEQ:<conv>}:DEDUP:<e-1>  the previous epoch
-- ARGV[1]  conversation ID
-- ARGV[2]  now, ms
-- ARGV[3]  lock token
-- ARGV[4]  refill mode: 0 none, 1 key was missing, 3 block was exhausted
-- ARGV[5]  refill: seq before the reserved block (Mongo's old max_seq)
-- ARGV[6]  refill: block size
-- ARGV[7]  dedup key TTL, ms
-- ARGV[8]  MALLOC_SEQ TTL, s
-- ARGV[9]  lock TTL, ms
-- ARGV[10] MSG_CACHE TTL, s
-- ARGV[11] SEQ_USER_READ TTL, s
-- ARGV[12] n, the number of messages
-- ARGV[13] 1: write MSG_CACHE and SEQ_USER_READ here; 0: leave them to the
--          caller (Redis Cluster, where those keys live in other slots)
-- ARGV[14] the seq message 1's cache JSON was written with; message i's
--          was written with this + i - 1. -1: the predictions are not
--          consecutive, read them from ARGV[15]
-- ARGV[15] per message, space-separated, 'predicted:offset': the seq its
--          JSON was written with and the byte offset of that seq's digits.
--          Read only when a message gets another seq than predicted (or
--          when ARGV[14] is -1)
-- ARGV[16] d: clientMsgIDs looked up in the durable ledger (Mongo) follow
--          as d pairs (clientMsgID, seq), seq 0 = not recorded; -1 = the
--          caller keeps no ledger (never ask for a lookup)
-- ARGV[17..16+2d]  the looked-up pairs
-- then per message (3 each): clientMsgID, sender index (0 = none), cache
--                  JSON written with the predicted seq
-- then the sender user IDs, indexed from 1.
--
-- Replies:
--   {0, prev, i_1, seq_1, ..., i_k, seq_k}  done; prev = CURR before. The
--                               pairs are the messages whose seq was already
--                               known (redeliveries, copies in the batch), by
--                               index, ascending; the others got prev + 1,
--                               prev + 2, ... in order
--   {1, need}                   key missing, lock taken: reserve and retry
--   {3, need}                   block exhausted, lock taken: reserve and retry
--   {2}                         another refill holds the lock: wait, retry
--   {4}                         our refill lost its lock: start over
--   {5, i_1, ..., i_k}          Redis lost this conversation's history:
--                               look messages i_1..i_k up in the ledger, retry
-- Numbers are written with %d so large seqs never turn into 1e+15.
--
-- Recovery after Redis lost its data. A refill that finds MALLOC_SEQ
-- missing while Mongo's seq document already had seqs (ARGV[5] > 0) means
-- this Redis does not know what was handed out before (a restart without
-- persistence, an expired key): the hash gets SUSPECT = now + one dedup
-- window, and until then a message the dedup table does not know is looked
-- up in the ledger before it may get a new seq. A seq from the ledger wins
-- over the dedup table (the ledger is written before any seq is used).

local ARGV = ARGV -- a local: read several times per message
local malloc = KEYS[1]
local conv = ARGV[1]
local now = tonumber(ARGV[2])
local token = ARGV[3]
local mode = tonumber(ARGV[4])
local n = tonumber(ARGV[12])
local write_cache = ARGV[13] == '1'
local first_predicted = tonumber(ARGV[14])
local looked_n = tonumber(ARGV[16])
local looked = {}
for j = 1, math.max(looked_n, 0) do
  looked[ARGV[15 + 2 * j]] = tonumber(ARGV[16 + 2 * j])
end
local base = 16 + 2 * math.max(looked_n, 0)
local senders_at = base + 3 * n

local format = string.format
local function num(x) return format('%d', x) end

-- 1. Dedup: which messages already have a seq (earlier delivery, or an
--    earlier copy inside this batch)?
local ids = {}
for i = 1, n do ids[i] = ARGV[base + 3 * (i - 1) + 1] end
local cur_epoch = redis.call('HMGET', KEYS[2], unpack(ids))
local prev_epoch = redis.call('HMGET', KEYS[3], unpack(ids))
local seqs, hits, first_of = {}, {}, {}
local seq_text = {} -- seqs[i] as decimal text, where already made
local need = 0
local recall, n_recall = {}, 0 -- ledger seqs the dedup table lacks or has wrong
local misses, n_misses = {}, 0 -- indices of new messages with an ID
for i = 1, n do
  local id = ids[i]
  local known = cur_epoch[i] or prev_epoch[i]
  local durable = looked[id]
  if id ~= '' and durable and durable > 0 then
    seqs[i] = durable; hits[i] = 1
    if tonumber(known) ~= durable and not first_of[id] then
      first_of[id] = i
      recall[n_recall + 1] = id
      recall[n_recall + 2] = num(durable)
      n_recall = n_recall + 2
    end
  elseif id ~= '' and known then
    seqs[i] = tonumber(known); hits[i] = 1
  elseif id ~= '' and first_of[id] then
    hits[i] = 1 -- resolved after allocation
  else
    need = need + 1; hits[i] = 0
    if id ~= '' then
      first_of[id] = i
      if looked[id] == nil then
        n_misses = n_misses + 1
        misses[n_misses] = i
      end
    end
  end
end
if n_recall > 0 then
  redis.call('HSET', KEYS[2], unpack(recall))
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end

-- Whether new messages must be looked up in the ledger first.
local function unresolved()
  if looked_n < 0 or n_misses == 0 then return nil end
  local until_ms = tonumber(redis.call('HGET', malloc, 'SUSPECT') or '0') or 0
  if until_ms <= now then return nil end
  local reply = {5}
  for k = 1, n_misses do reply[k + 1] = misses[k] end
  return reply
end

-- 2. Allocation, compatible with OpenIM's MALLOC_SEQ protocol.
local prev = 0
if need > 0 then
  local h = redis.call('HMGET', malloc, 'CURR', 'LAST', 'LOCK')
  -- Every writer of this hash (ours and OpenIM's) sets CURR and LAST
  -- together or LOCK alone, so the key exists iff one of them is there.
  local exists = (h[1] or h[2] or h[3]) and 1 or 0
  if mode == 1 or mode == 3 then
    -- Install the block we reserved in Mongo, if the lock is still ours. If
    -- the whole key expired meanwhile the block is still exclusively ours.
    if exists == 1 and h[3] ~= token then return {4} end
    local rbase = tonumber(ARGV[5])
    local rblock = tonumber(ARGV[6])
    local curr = rbase
    if mode == 3 and exists == 1 and tonumber(h[2]) == rbase then
      curr = tonumber(h[1]) -- Mongo was untouched: continue the old block
    end
    redis.call('HSET', malloc, 'CURR', num(curr), 'LAST', num(rbase + rblock))
    redis.call('HDEL', malloc, 'LOCK')
    if mode == 1 and rbase > 0 then
      local window = math.floor(tonumber(ARGV[7]) / 2)
      redis.call('HSET', malloc, 'SUSPECT', num(now + window))
    end
    h = {num(curr), num(rbase + rblock), false}
  elseif h[3] then
    return {2}
  elseif exists == 0 then
    redis.call('HSET', malloc, 'LOCK', token)
    redis.call('PEXPIRE', malloc, ARGV[9])
    return {1, need}
  end
  local ask = unresolved()
  if ask then return ask end
  local curr = tonumber(h[1]) or 0
  local last = tonumber(h[2]) or 0
  if curr + need > last then
    redis.call('HSET', malloc, 'LOCK', token)
    redis.call('PEXPIRE', malloc, ARGV[9])
    return {3, need}
  end
  prev = curr
  local next_seq = curr
  local fresh, n_fresh = {}, 0
  for i = 1, n do
    if hits[i] == 0 then
      next_seq = next_seq + 1
      seqs[i] = next_seq
      local id = ids[i]
      if id ~= '' then
        -- The decimal text is kept for the cache key and value below.
        local text = num(next_seq)
        seq_text[i] = text
        fresh[n_fresh + 1] = id
        fresh[n_fresh + 2] = text
        n_fresh = n_fresh + 2
      end
    end
  end
  for i = 1, n do
    if seqs[i] == nil then seqs[i] = seqs[first_of[ids[i]]] end
  end
  redis.call('HSET', malloc, 'CURR', num(next_seq), 'TIME', num(now))
  redis.call('EXPIRE', malloc, ARGV[8])
  if n_fresh > 0 then
    redis.call('HSET', KEYS[2], unpack(fresh))
    redis.call('PEXPIRE', KEYS[2], ARGV[7])
  end
else
  for i = 1, n do
    if seqs[i] == nil then seqs[i] = seqs[first_of[ids[i]]] end
  end
  if mode == 1 or mode == 3 then
    -- Everything turned out to be known (another instance got there while
    -- we reserved): give the lock back; the reserved block becomes a gap.
    if redis.call('HGET', malloc, 'LOCK') == token then
      redis.call('HDEL', malloc, 'LOCK')
      redis.call('EXPIRE', malloc, ARGV[8])
    end
  end
end

-- 3. Message cache (every message, hits included: the earlier delivery may
--    not have got this far) and the senders' read seqs, max-only. The
--    caller wrote each JSON with the seq it predicted; where that is not
--    the seq the message got, the digits are replaced.
local predicted, offsets -- from ARGV[15], read when first needed
local function read_predictions()
  predicted, offsets = {}, {}
  local k = 0
  for p, o in string.gmatch(ARGV[15], '(%-?%d+):(%d+)') do
    k = k + 1
    predicted[k] = tonumber(p)
    offsets[k] = tonumber(o)
  end
end
if first_predicted < 0 then read_predictions() end
local top = {}
local reply, n_reply = {0, prev}, 2
for i = 1, n do
  if write_cache then
    local at = base + 3 * (i - 1)
    local s = seq_text[i] or num(seqs[i])
    local key = 'MSG_CACHE:' .. conv .. ':' .. s
    local json = ARGV[at + 3]
    local guess = predicted and predicted[i] or first_predicted + i - 1
    if seqs[i] ~= guess then
      if not offsets then read_predictions() end
      local off = offsets[i]
      json = string.sub(json, 1, off) .. s .. string.sub(json, off + #num(guess) + 1)
    end
    redis.call('HSET', key, 'value', json)
    redis.call('EXPIRE', key, ARGV[10])
    local who = tonumber(ARGV[at + 2])
    if who > 0 and (top[who] == nil or top[who] < seqs[i]) then top[who] = seqs[i] end
  end
  if hits[i] == 1 then
    reply[n_reply + 1] = i
    reply[n_reply + 2] = seqs[i]
    n_reply = n_reply + 2
  end
end
for who, s in pairs(top) do
  local key = 'SEQ_USER_READ:' .. conv .. ':' .. ARGV[senders_at + who]
  local cur = tonumber(redis.call('HGET', key, 'value') or '0') or 0
  if cur < s then
    redis.call('HSET', key, 'value', num(s))
    redis.call('EXPIRE', key, ARGV[11])
  end
end
return reply
