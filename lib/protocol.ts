/**
 * The `stabilizer.v1` wire protocol (PROTOCOL.md): what a client that negotiated the
 * subprotocol receives and may send. Plain clients never see any of it.
 */

/** What a resume gave back: `full` (everything missed), `partial` (a gap), `none` (no positions offered). */
export type ReplayOutcome = 'full' | 'partial' | 'none'

export const subprotocol = 'stabilizer.v1'
/** Offered next to `stabilizer.v1` to resume: `stabilizer.token.<token>`. */
export const tokenProtocolPrefix = 'stabilizer.token.'
/** Offered next to `stabilizer.v1` to resume: `stabilizer.pos.<base64url JSON positions>`. */
export const positionsProtocolPrefix = 'stabilizer.pos.'

/** Where a client stands in each stream it follows: stream → [epoch, seq]. */
export type Positions = Record<string, [epoch: string, seq: number]>

/** Bounds of an offered set of positions. */
export const maxOfferedStreams = 256
export const maxPositionsText = 8192
const maxEpochLength = 64

/** What the handshake's `Sec-WebSocket-Protocol` offers of the protocol. */
export interface ProtocolOffer {
  /** Whether `stabilizer.v1` was offered. */
  readonly offered: boolean
  readonly token: string | undefined
  readonly positions: Positions | undefined
}

/** Reads the protocol's entries from a `Sec-WebSocket-Protocol` request header. */
export function readOffer (header: string | string[] | undefined): ProtocolOffer {
  if (header === undefined) return { offered: false, token: undefined, positions: undefined }
  let offered = false
  let token: string | undefined
  let positions: Positions | undefined
  for (const entry of (Array.isArray(header) ? header.join(',') : header).split(',')) {
    const value = entry.trim()
    if (value === subprotocol) offered = true
    else if (value.startsWith(tokenProtocolPrefix)) token = value.slice(tokenProtocolPrefix.length)
    else if (value.startsWith(positionsProtocolPrefix)) positions = decodePositions(value.slice(positionsProtocolPrefix.length))
  }
  return { offered, token, positions }
}

/** Positions as the client offers them: base64url (no padding) of their JSON. */
export function encodePositions (positions: Positions): string {
  return Buffer.from(JSON.stringify(positions)).toString('base64url')
}

/** The positions of an offer, or undefined for anything malformed or over the bounds. */
export function decodePositions (text: string | undefined): Positions | undefined {
  if (text === undefined || text.length === 0 || text.length > maxPositionsText || !/^[A-Za-z0-9_-]+$/.test(text)) return undefined
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'))
  } catch {
    return undefined
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined
  const entries = Object.entries(value)
  if (entries.length > maxOfferedStreams) return undefined
  const positions: Positions = Object.create(null) as Positions
  for (const [stream, position] of entries) {
    if (!Array.isArray(position) || position.length !== 2) return undefined
    const [epoch, seq] = position as unknown[]
    if (typeof epoch !== 'string' || epoch.length === 0 || epoch.length > maxEpochLength) return undefined
    if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) return undefined
    positions[stream] = [epoch, seq]
  }
  return positions
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

// ---- server → client -----------------------------------------------------------------------

/** A text payload as the protocol carries it: a JSON string literal, serialized once per message. */
export function textPayload (text: string): Buffer {
  return Buffer.from(JSON.stringify(text))
}

const positionlessHead = Buffer.from('{"t":"m","d":')
const messageTail = Buffer.from('}')

/**
 * The text frame of one message: `{"t":"m","c":<stream>,"e":<epoch>,"s":<seq>,"d":<payload>}`,
 * or `{"t":"m","d":<payload>}` without a position. Built once per message, shared by every recipient.
 */
export function textMessageFrame (stream: string | undefined, epoch: string, seq: number, payload: Buffer): Buffer {
  const head = stream === undefined
    ? positionlessHead
    : Buffer.from(`{"t":"m","c":${JSON.stringify(stream)},"e":${JSON.stringify(epoch)},"s":${seq},"d":`)
  return Buffer.concat([head, payload, messageTail], head.length + payload.length + 1)
}

/** The binary frame of one message: u16 stream length, stream, u8 epoch length, epoch, u64 seq, payload. */
export function binaryMessageFrame (stream: string | undefined, epoch: string, seq: number, payload: Buffer): Buffer {
  const streamBytes = stream === undefined ? 0 : Buffer.byteLength(stream)
  const epochBytes = stream === undefined ? 0 : Buffer.byteLength(epoch, 'latin1')
  const headerLength = 2 + streamBytes + 1 + epochBytes + 8
  const frame = Buffer.allocUnsafe(headerLength + payload.length)
  let at = frame.writeUInt16BE(streamBytes, 0)
  if (stream !== undefined) at += frame.write(stream, at)
  at = frame.writeUInt8(epochBytes, at)
  if (stream !== undefined) at += frame.write(epoch, at, 'latin1')
  const value = stream === undefined ? 0 : seq
  at = frame.writeUInt32BE(Math.floor(value / 0x1_0000_0000), at)
  at = frame.writeUInt32BE(value % 0x1_0000_0000, at)
  payload.copy(frame, at)
  return frame
}

/** A binary message frame's position and payload; undefined when the header is truncated. */
export function parseBinaryMessage (bytes: Uint8Array): { stream: string | undefined, epoch: string, seq: number, payload: Uint8Array } | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (bytes.length < 11) return undefined
  const streamBytes = view.getUint16(0)
  if (bytes.length < 2 + streamBytes + 1 + 8) return undefined
  const epochBytes = view.getUint8(2 + streamBytes)
  const seqAt = 3 + streamBytes + epochBytes
  if (bytes.length < seqAt + 8) return undefined
  const decoder = new TextDecoder()
  const stream = streamBytes === 0 ? undefined : decoder.decode(bytes.subarray(2, 2 + streamBytes))
  const epoch = decoder.decode(bytes.subarray(3 + streamBytes, seqAt))
  const seq = view.getUint32(seqAt) * 0x1_0000_0000 + view.getUint32(seqAt + 4)
  return { stream, epoch, seq, payload: bytes.subarray(seqAt + 8) }
}

export interface ResumeReport {
  outcome: ReplayOutcome
  /** Whether the session's user data and groups were restored. */
  stateRestored: boolean
  /** Messages sent again after the welcome. */
  replayed: number
  /** Messages missed that could not be replayed (no longer kept), when their number is known. */
  missed: number
  /** Whether the history of a stream the client followed was lost (an unknown number of messages missed). */
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
  /** The streams the session follows and where the client stands in each. */
  positions: Positions
  /** null for a new session. */
  resume: ResumeReport | null
}

export function pingFrame (timestamp: number): string {
  return `{"t":"ping","ts":${timestamp}}`
}

/** The session follows a stream from this position on (it joined a group). */
export function followFrame (stream: string, epoch: string, seq: number): string {
  return JSON.stringify({ t: 'follow', c: stream, e: epoch, s: seq })
}

export function unfollowFrame (stream: string): string {
  return JSON.stringify({ t: 'unfollow', c: stream })
}

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
