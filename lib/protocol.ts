/**
 * The `stabilizer.v1` wire protocol (PROTOCOL.md): the offer, the frames and the positions both
 * sides exchange. The client library imports it too, so what it uses stays free of Node APIs.
 */

export const subprotocol = 'stabilizer.v1'
/** Offered next to `stabilizer.v1` to resume: `stabilizer.token.<token>`. */
export const tokenProtocolPrefix = 'stabilizer.token.'
/** Offered next to `stabilizer.v1` to resume: `stabilizer.pos.<encodePositions(positions)>`. */
export const positionsProtocolPrefix = 'stabilizer.pos.'
/** Streams a positions offer may hold; the server accepts no more. */
export const maxOfferedStreams = 256
/** Characters of an encoded positions offer (base64url text); the server accepts no more. */
export const maxPositionsLength = 8192
/** Characters of an epoch. */
export const maxEpochLength = 64

export type ReplayOutcome = 'full' | 'partial' | 'none'

/**
 * Where a client stands in each stream it follows: stream (`*`, `g:<group>`, `c:<clientId>`) →
 * the epoch and seq of the last message it has.
 */
export type Positions = Record<string, [epoch: string, seq: number]>

// ---- positions -------------------------------------------------------------------------------

/**
 * A positions offer: base64url (no padding) of the positions' JSON. Undefined when the peer
 * would refuse it (more than `maxOfferedStreams` streams, longer than `maxPositionsLength`, or
 * an entry `decodePositions` rejects), so that a client never offers what cannot be read.
 */
export function encodePositions (positions: Positions): string | undefined {
  const streams = Object.keys(positions)
  if (streams.length > maxOfferedStreams) return undefined
  for (const stream of streams) if (!validEntry(stream, positions[stream])) return undefined
  const text = toBase64url(utf8Encoder.encode(JSON.stringify(positions)))
  return text.length <= maxPositionsLength ? text : undefined
}

/** The positions of an offer (`stabilizer.pos.` entry or `positions` query); undefined on anything malformed. */
export function decodePositions (text: string | undefined): Positions | undefined {
  if (typeof text !== 'string' || text.length > maxPositionsLength || text.length % 4 === 1 || !/^[\w-]*$/.test(text)) return undefined
  let value: unknown
  try {
    const binary = atob(text.replace(/-/g, '+').replace(/_/g, '/'))
    const bytes = new Uint8Array(binary.length)
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i)
    value = JSON.parse(utf8Decoder.decode(bytes))
  } catch {
    return undefined
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined
  const streams = Object.keys(value)
  if (streams.length > maxOfferedStreams) return undefined
  for (const stream of streams) if (!validEntry(stream, (value as Record<string, unknown>)[stream])) return undefined
  return value as Positions
}

/** A stream of one of the protocol's three kinds (which also keeps `__proto__` out), at a valid position. */
function validEntry (stream: string, position: unknown): boolean {
  if (stream !== '*' && !/^[gc]:/.test(stream)) return false
  if (!Array.isArray(position) || position.length !== 2) return false
  const [epoch, seq] = position as unknown[]
  return typeof epoch === 'string' && epoch.length > 0 && epoch.length <= maxEpochLength && isSeq(seq)
}

function isSeq (value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0
}

function toBase64url (bytes: Uint8Array): string {
  let binary = ''
  for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i])
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

const utf8Encoder = /* @__PURE__ */ new TextEncoder()
// fatal: a stream name or offer that is not UTF-8 is malformed, not silently replaced.
const utf8Decoder = /* @__PURE__ */ new TextDecoder('utf-8', { fatal: true })

// ---- negotiation -----------------------------------------------------------------------------

/** What the handshake's `Sec-WebSocket-Protocol` offers of the protocol. */
export interface ProtocolOffer {
  /** Whether `stabilizer.v1` was offered. */
  readonly offered: boolean
  readonly token: string | undefined
  /** The offered positions; undefined when none were offered or the entry was malformed. */
  readonly positions: Positions | undefined
}

/** Reads the protocol's entries from a `Sec-WebSocket-Protocol` request header. */
export function readOffer (header: string | string[] | undefined): ProtocolOffer {
  let offered = false
  let token: string | undefined
  let positions: Positions | undefined
  if (header === undefined) return { offered, token, positions }
  for (const entry of (Array.isArray(header) ? header.join(',') : header).split(',')) {
    const value = entry.trim()
    if (value === subprotocol) offered = true
    else if (value.startsWith(tokenProtocolPrefix)) token = value.slice(tokenProtocolPrefix.length)
    else if (value.startsWith(positionsProtocolPrefix)) positions = decodePositions(value.slice(positionsProtocolPrefix.length))
  }
  return { offered, token, positions }
}

/**
 * The subprotocol the server selects among those offered: `stabilizer.v1` when offered, else
 * the first offer that is not one of the protocol's resume entries, else none.
 */
export function selectProtocol (protocols: Set<string>): string | false {
  if (protocols.has(subprotocol)) return subprotocol
  for (const protocol of protocols) {
    if (!protocol.startsWith(tokenProtocolPrefix) && !protocol.startsWith(positionsProtocolPrefix)) return protocol
  }
  return false
}

// ---- server → client -------------------------------------------------------------------------

export interface ResumeReport {
  outcome: ReplayOutcome
  /** Whether the session's user data and groups were restored. */
  stateRestored: boolean
  /** Messages sent again after the welcome. */
  replayed: number
  /** Missed messages that were no longer kept (counted; a lost history is not). */
  missed: number
  /** Whether the history of an offered stream was lost (its epoch changed): how much is unknown. */
  historyLost: boolean
}

export interface Welcome {
  t: 'welcome'
  v: 1
  clientId: string
  sessionId: string
  /** Proves the connection to `POST /reconnect-token`. */
  secret: string
  /** A fresh reconnect token (null with `enableReconnect: false`). */
  token: string | null
  tokenExpiresAt: number | null
  heartbeat: { interval: number, timeout: number }
  /** The streams the session follows and where the client stands: replayed, then new messages follow. */
  positions: Positions
  /** null for a new session. */
  resume: ResumeReport | null
}

/** A text message; `c`, `e` and `s` are absent on a message without a position. */
export interface MessageFrame {
  t: 'm'
  c?: string
  e?: string
  s?: number
  /** The application's text. */
  d: string
}

/** The session follows a stream (it joined a group) from this position. */
export interface FollowFrame {
  t: 'follow'
  c: string
  e: string
  s: number
}

/** The session no longer follows a stream (it left a group). */
export interface UnfollowFrame {
  t: 'unfollow'
  c: string
}

export interface PingFrame {
  t: 'ping'
  ts: number
}

/** The answer to `{"t":"token"}`: a token, or none and when to ask again (null: reconnection is disabled). */
export type TokenFrame =
  | { t: 'token', token: string, expiresAt: number }
  | { t: 'token', token: null, retryAfter: number | null }

export type ServerFrame = Welcome | MessageFrame | FollowFrame | UnfollowFrame | PingFrame | TokenFrame

/** A text payload as the protocol carries it: a JSON string literal, serialized once per message. */
export function textPayload (text: string): Buffer {
  return Buffer.from(JSON.stringify(text))
}

/**
 * The text frame of a message at `seq` of `stream`'s `epoch`; `payload` is the JSON string
 * literal (`textPayload`). With stream `''`, epoch `''` and seq 0: a message without a position.
 */
export function textMessageFrame (stream: string, epoch: string, seq: number, payload: Uint8Array): Buffer {
  checkPosition(stream, epoch, seq)
  const head = stream === '' && epoch === '' && seq === 0
    ? '{"t":"m","d":'
    : `{"t":"m","c":${JSON.stringify(stream)},"e":${JSON.stringify(epoch)},"s":${seq},"d":`
  const headLength = Buffer.byteLength(head)
  const frame = Buffer.allocUnsafe(headLength + payload.length + 1)
  frame.write(head, 0)
  frame.set(payload, headLength)
  frame[frame.length - 1] = 0x7d // }
  return frame
}

/**
 * The binary frame of a message: stream length (u16 BE), stream (UTF-8), epoch length (u8),
 * epoch, seq (u64 BE), then the payload's bytes. Stream `''`, epoch `''`, seq 0: no position.
 */
export function binaryMessageFrame (stream: string, epoch: string, seq: number, payload: Uint8Array): Buffer {
  checkPosition(stream, epoch, seq)
  const streamBytes = Buffer.byteLength(stream)
  const epochBytes = Buffer.byteLength(epoch)
  if (streamBytes > 0xffff) throw new RangeError(`A stream name is at most 65535 UTF-8 bytes, got ${streamBytes}`)
  const headerLength = 2 + streamBytes + 1 + epochBytes + 8
  const frame = Buffer.allocUnsafe(headerLength + payload.length)
  frame.writeUInt16BE(streamBytes, 0)
  frame.write(stream, 2)
  frame[2 + streamBytes] = epochBytes
  frame.write(epoch, 3 + streamBytes)
  frame.writeUInt32BE(Math.floor(seq / 0x1_0000_0000), headerLength - 8)
  frame.writeUInt32BE(seq % 0x1_0000_0000, headerLength - 4)
  frame.set(payload, headerLength)
  return frame
}

/** Frames are built from the server's own state: a bad position is a bug, thrown at once. */
function checkPosition (stream: string, epoch: string, seq: number): void {
  if (!isSeq(seq)) throw new RangeError(`A seq is a safe non-negative integer, got ${seq}`)
  if (epoch.length > maxEpochLength) throw new RangeError(`An epoch is at most ${maxEpochLength} characters, got ${epoch.length}`)
  if ((stream === '') !== (epoch === '') || (stream === '' && seq !== 0)) throw new RangeError('A message has a stream, an epoch and a seq, or none of them')
}

/** A binary message frame, decoded. `stream` is `''` for a message without a position. */
export interface BinaryMessage {
  readonly stream: string
  readonly epoch: string
  readonly seq: number
  /** The application's bytes (a view into the frame). */
  readonly payload: Uint8Array
}

/** Decodes a binary message frame's header; undefined when it is truncated, not UTF-8, or its seq is beyond 2^53 − 1. */
export function parseBinaryMessage (bytes: Uint8Array): BinaryMessage | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (bytes.length < 2) return undefined
  const streamEnd = 2 + view.getUint16(0)
  if (bytes.length < streamEnd + 1) return undefined
  const epochEnd = streamEnd + 1 + bytes[streamEnd]
  if (bytes.length < epochEnd + 8) return undefined
  const high = view.getUint32(epochEnd)
  if (high > 0x1f_ffff) return undefined
  try {
    return {
      stream: utf8Decoder.decode(bytes.subarray(2, streamEnd)),
      epoch: utf8Decoder.decode(bytes.subarray(streamEnd + 1, epochEnd)),
      seq: high * 0x1_0000_0000 + view.getUint32(epochEnd + 4),
      payload: bytes.subarray(epochEnd + 8)
    }
  } catch {
    return undefined
  }
}

/** `{"t":"follow","c":…,"e":…,"s":…}`: the session follows `stream` from this position. */
export function followFrame (stream: string, epoch: string, seq: number): string {
  return JSON.stringify({ t: 'follow', c: stream, e: epoch, s: seq })
}

/** `{"t":"unfollow","c":…}`: the session left `stream`. */
export function unfollowFrame (stream: string): string {
  return JSON.stringify({ t: 'unfollow', c: stream })
}

export function pingFrame (timestamp: number): string {
  return `{"t":"ping","ts":${timestamp}}`
}

// ---- the previous protocol, until the server switches ------------------------------------------

// ---- client → server -----------------------------------------------------------------------

export type ClientFrame =
  | { t: 'm', d: string }
  | { t: 'pong', ts?: number }
  | { t: 'token' }
  | { t: 'unknown' }

/** Parses a client's text frame; undefined when it is not a protocol frame (a protocol error). */
export function parseClientFrame (text: string): ClientFrame | undefined {
  let frame: unknown
  try {
    frame = JSON.parse(text)
  } catch {
    return undefined
  }
  if (typeof frame !== 'object' || frame === null) return undefined
  const { t, d } = frame as { t?: unknown, d?: unknown }
  switch (t) {
    case 'm': return typeof d === 'string' ? { t, d } : undefined
    case 'pong': return { t }
    case 'token': return { t }
    default: return typeof t === 'string' ? { t: 'unknown' } : undefined
  }
}
