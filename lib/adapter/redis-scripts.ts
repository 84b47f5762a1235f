/**
 * The Redis adapter's Lua scripts: each is one atomic round trip whose keys share one hash
 * tag (so it runs on a Redis Cluster too), called with EVALSHA and loaded again on NOSCRIPT.
 */
import { createHash } from 'node:crypto'

/** Bytes a log entry counts beyond its payload (PROTOCOL.md §5). */
export const entryOverheadBytes = 160

// A stream's keys: KEYS[1] the meta HASH {epoch, seq, bytes}, KEYS[2] the STREAM, whose
// entries have the id `<seq>-0` and the fields d (payload), m (meta JSON), t (ts), n (bytes).
// Opening the meta creates the epoch when it is missing: a Redis that lost the meta lost the
// history too, so the old log is deleted and every older position reads as `missed: -1`.
const openMeta = `
local function openMeta (meta, log, newEpoch, metaTtl)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = newEpoch
    redis.call('DEL', log)
    redis.call('HSET', meta, 'epoch', epoch, 'seq', 0, 'bytes', 0)
  end
  redis.call('PEXPIRE', meta, metaTtl)
  return epoch
end
-- Milliseconds with the microseconds as a fraction: publishes to different streams in one
-- millisecond still replay in the order they were made.
local function now ()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
-- Drops the oldest entries while the log is over a bound or older than minTs; the ids are
-- consecutive, so one XTRIM MINID removes them. Steady state: about one entry per append.
local function trim (meta, log, maxEntries, maxBytes, minTs)
  local len = redis.call('XLEN', log)
  if len == 0 then return end
  local bytes = tonumber(redis.call('HGET', meta, 'bytes') or '0')
  local keepFrom = nil
  local cursor = '-'
  while len > 0 do
    local batch = redis.call('XRANGE', log, cursor, '+', 'COUNT', 32)
    if #batch == 0 then break end
    local stop = false
    for i = 1, #batch do
      local fields = batch[i][2]
      local ts, size = tonumber(fields[6]), tonumber(fields[8])
      if len > maxEntries or bytes > maxBytes or ts <= minTs then
        len = len - 1
        bytes = bytes - size
        keepFrom = nil
        cursor = '(' .. batch[i][1]
      else
        keepFrom = batch[i][1]
        stop = true
        break
      end
    end
    if stop then break end
  end
  if cursor ~= '-' then
    if keepFrom then
      redis.call('XTRIM', log, 'MINID', keepFrom)
    else
      redis.call('DEL', log)
      bytes = 0
    end
    redis.call('HSET', meta, 'bytes', bytes)
  end
end
`

/**
 * Appends and notifies in one step. KEYS: meta, log. ARGV: new epoch, maxEntries, maxBytes,
 * retentionMs, metaTtl, payload, meta JSON, channel, publish command. Returns {epoch, seq, ts}.
 * The notification is `<epoch> <seq> <ts> <meta JSON>\n<payload>`.
 */
export const publishScript = `${openMeta}
local meta, log = KEYS[1], KEYS[2]
local maxEntries, maxBytes, retention = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local payload, info = ARGV[6], ARGV[7]
local epoch = openMeta(meta, log, ARGV[1], ARGV[5])
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local ts = now()
-- As text: Lua prints numbers with 14 digits and returns them to the caller as integers.
local tsText = string.format('%.3f', ts)
if maxEntries > 0 then
  local size = #payload + ${entryOverheadBytes}
  redis.call('XADD', log, seq .. '-0', 'd', payload, 'm', info, 't', tsText, 'n', size)
  redis.call('HINCRBY', meta, 'bytes', size)
  trim(meta, log, maxEntries, maxBytes, ts - retention)
  if redis.call('EXISTS', log) == 1 then redis.call('PEXPIRE', log, retention) end
end
redis.call(ARGV[9], ARGV[8], epoch .. ' ' .. seq .. ' ' .. tsText .. ' ' .. info .. '\\n' .. payload)
return { epoch, seq, tsText }
`

/**
 * The position of a stream and the entries after one. KEYS: meta, log. ARGV: new epoch,
 * metaTtl, the reader's epoch ('' for none), its seq, limit, maxEntries, maxBytes, retentionMs.
 * Returns {epoch, top, missed, id1, fields1, id2, fields2, ...}; limit 0 reads only the top.
 */
export const readScript = `${openMeta}
local meta, log = KEYS[1], KEYS[2]
local epoch = openMeta(meta, log, ARGV[1], ARGV[2])
local top = tonumber(redis.call('HGET', meta, 'seq'))
local limit = tonumber(ARGV[5])
local result = { epoch, top, 0 }
if limit == 0 then return result end
trim(meta, log, tonumber(ARGV[6]), tonumber(ARGV[7]), now() - tonumber(ARGV[8]))
local after = 0
local lost = false
if ARGV[3] ~= '' then
  after = tonumber(ARGV[4])
  -- Another epoch, or a position beyond the top (the stream went back without a new epoch,
  -- as after a failover to a replica that lagged): how much is gone is unknown.
  if ARGV[3] ~= epoch or after > top then
    lost = true
    after = 0
  end
end
local entries = redis.call('XRANGE', log, '(' .. after .. '-0', '+', 'COUNT', limit)
local first = top + 1
if #entries > 0 then first = tonumber(string.match(entries[1][1], '^(%d+)')) end
if lost then result[3] = -1 else result[3] = first - after - 1 end
for i = 1, #entries do
  result[#result + 1] = entries[i][1]
  result[#result + 1] = entries[i][2]
end
return result
`

/**
 * Where a subscription that was asked for at `since` starts. KEYS: meta, log. ARGV: new epoch,
 * metaTtl, since (ms, the store's clock). Returns {epoch, top, before}: `before` is the last seq
 * published before `since` (entries after it were published since the subscription was asked
 * for, while it was not live yet); the log is scanned from its newest entry back.
 */
export const startScript = `${openMeta}
local meta, log = KEYS[1], KEYS[2]
local epoch = openMeta(meta, log, ARGV[1], ARGV[2])
local top = tonumber(redis.call('HGET', meta, 'seq'))
local since = tonumber(ARGV[3])
local before = top
local cursor, count = '+', 1
while true do
  local batch = redis.call('XREVRANGE', log, cursor, '-', 'COUNT', count)
  if #batch == 0 then break end
  for i = 1, #batch do
    local seq = tonumber(string.match(batch[i][1], '^(%d+)'))
    if tonumber(batch[i][2][6]) < since then return { epoch, top, seq } end
    before = seq - 1
  end
  cursor, count = '(' .. batch[#batch][1], 32
end
return { epoch, top, before }
`

/**
 * The instance heartbeat. KEYS: the members ZSET, the instance key prefix (its own keys are
 * `<prefix><id>`). ARGV: id, connections, ttl, keep (how long the ZSET outlives the last
 * instance). Drops members whose key expired; returns {id1, connections1, ...}.
 */
export const heartbeatScript = `
local members, prefix = KEYS[1], KEYS[2]
redis.call('SET', prefix .. ARGV[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', members, 0, ARGV[1])
redis.call('PEXPIRE', members, ARGV[4])
local result = {}
for _, id in ipairs(redis.call('ZRANGE', members, 0, -1)) do
  local count = redis.call('GET', prefix .. id)
  if count then
    result[#result + 1] = id
    result[#result + 1] = count
  else
    redis.call('ZREM', members, id)
  end
end
return result
`

/** Leaves the members. KEYS: members, instance key prefix. ARGV: id. */
export const leaveScript = `
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2] .. ARGV[1])
return 1
`

// A client's owner key holds `<instanceId>@<since>`: the instance holding it and when that
// connection opened, so that claims are ordered by the connections' age, not by arrival.
const ownerOf = `
local function ownerOf (value)
  if not value then return nil, 0 end
  local id, since = string.match(value, '^(.*)@(%d+)$')
  if not id then return value, 0 end
  return id, tonumber(since)
end
`

/**
 * Claims a client for a connection. KEYS: owner. ARGV: id, since, presenceTtl. Returns
 * {1, previous holder or ''} when claimed, {0, holder} when a connection that opened later
 * holds it (nothing changed).
 */
export const claimScript = `${ownerOf}
local holder, since = ownerOf(redis.call('GET', KEYS[1]))
if holder and holder ~= ARGV[1] and since > tonumber(ARGV[2]) then return { 0, holder } end
redis.call('SET', KEYS[1], ARGV[1] .. '@' .. ARGV[2], 'PX', ARGV[3])
return { 1, holder or '' }
`

/**
 * Releases a client: deletes its owner key only if it still names this instance, and
 * restarts its session's retention window. KEYS: owner, session. ARGV: id, retentionMs.
 */
export const releaseScript = `${ownerOf}
if ownerOf(redis.call('GET', KEYS[1])) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
`

/**
 * Keeps a held client's presence and session alive. KEYS: owner, session. ARGV: id,
 * presenceTtl, retentionMs, whether a session was saved, since. The owner key is written
 * again when it is missing (a Redis that restarted empty), never over another instance's
 * claim. Returns 0 when another instance holds the client, 2 when its session is missing,
 * else 1.
 */
export const refreshScript = `${ownerOf}
local holder = ownerOf(redis.call('GET', KEYS[1]))
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. '@' .. ARGV[5], 'PX', ARGV[2])
if redis.call('PEXPIRE', KEYS[2], ARGV[3]) == 0 and ARGV[4] == '1' then return 2 end
return 1
`

// A session is stored as `<length of sessionId>:<sessionId><record JSON>`, so the id is
// compared without decoding the record.
const sessionMatches = `
local function sessionMatches (value, sessionId)
  if not value then return false end
  local colon = string.find(value, ':', 1, true)
  if not colon then return false end
  local length = tonumber(string.sub(value, 1, colon - 1))
  return string.sub(value, colon + 1, colon + length) == sessionId
end
`

/** Takes a session if it is `sessionId`. KEYS: session. ARGV: sessionId. Returns the stored value or nil. */
export const takeSessionScript = `${sessionMatches}
local value = redis.call('GET', KEYS[1])
if sessionMatches(value, ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return value
end
return false
`

/** Deletes a session if it is `sessionId`. KEYS: session. ARGV: sessionId. */
export const dropSessionScript = `${sessionMatches}
if sessionMatches(redis.call('GET', KEYS[1]), ARGV[1]) then redis.call('DEL', KEYS[1]) end
return 1
`

/** A script with its SHA1, as EVALSHA names it. */
export interface Script {
  readonly lua: string
  readonly sha: string
}

export function script (lua: string): Script {
  return { lua, sha: createHash('sha1').update(lua).digest('hex') }
}

/** The part of an ioredis client (Redis or Cluster) that running a script needs. */
export interface ScriptRunner {
  call: (command: string, ...args: Array<string | Buffer | number>) => Promise<unknown>
  callBuffer: (command: string, ...args: Array<string | Buffer | number>) => Promise<unknown>
}

/**
 * Runs `script` with EVALSHA; on NOSCRIPT (a Redis restarted, flushed, or another node) with
 * EVAL, which also caches it for the next EVALSHA.
 */
export async function runScript (client: ScriptRunner, target: Script, keys: readonly string[], args: ReadonlyArray<string | Buffer | number>, binary = false): Promise<unknown> {
  const call = binary ? client.callBuffer.bind(client) : client.call.bind(client)
  try {
    return await call('EVALSHA', target.sha, keys.length, ...keys, ...args)
  } catch (err) {
    if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err
    return await call('EVAL', target.lua, keys.length, ...keys, ...args)
  }
}
