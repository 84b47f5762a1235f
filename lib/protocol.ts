/**
 * The `stabilizer.v1` wire protocol (PROTOCOL.md): what a client that negotiated the
 * subprotocol receives and may send. Plain clients never see any of it.
 */
import type { ReplayOutcome } from './replay.js'

export const subprotocol = 'stabilizer.v1'
/** Offered next to `stabilizer.v1` to resume: `stabilizer.token.<token>`. */
export const tokenProtocolPrefix = 'stabilizer.token.'
/** Offered next to `stabilizer.v1` to resume: `stabilizer.last.<seq>`, the last sequence number the client received. */
export const lastSeqProtocolPrefix = 'stabilizer.last.'

/** Bytes of the sequence-number header of a binary message frame (big-endian unsigned 64-bit). */
export const binaryHeaderBytes = 8

/** What the handshake's `Sec-WebSocket-Protocol` offers of the protocol. */
export interface ProtocolOffer {
  /** Whether `stabilizer.v1` was offered. */
  readonly offered: boolean
  readonly token: string | undefined
  readonly lastSeq: number | undefined
}

/** Reads the protocol's entries from a `Sec-WebSocket-Protocol` request header. */
export function readOffer (header: string | string[] | undefined): ProtocolOffer {
  if (header === undefined) return { offered: false, token: undefined, lastSeq: undefined }
  let offered = false
  let token: string | undefined
  let lastSeq: number | undefined
  for (const entry of (Array.isArray(header) ? header.join(',') : header).split(',')) {
    const value = entry.trim()
    if (value === subprotocol) offered = true
    else if (value.startsWith(tokenProtocolPrefix)) token = value.slice(tokenProtocolPrefix.length)
    else if (value.startsWith(lastSeqProtocolPrefix)) lastSeq = parseSeq(value.slice(lastSeqProtocolPrefix.length))
  }
  return { offered, token, lastSeq }
}

/** A non-negative safe integer written in decimal, else undefined. */
export function parseSeq (text: string | undefined): number | undefined {
  if (text === undefined || !/^\d{1,16}$/.test(text)) return undefined
  const value = Number(text)
  return Number.isSafeInteger(value) ? value : undefined
}

/**
 * The subprotocol the server selects among those offered: `stabilizer.v1` when offered, else
 * the first offer that is not one of the protocol's resume entries, else none.
 */
export function selectProtocol (protocols: Set<string>): string | false {
  if (protocols.has(subprotocol)) return subprotocol
  for (const protocol of protocols) {
    if (!protocol.startsWith(tokenProtocolPrefix) && !protocol.startsWith(lastSeqProtocolPrefix)) return protocol
  }
  return false
}

// ---- server → client -----------------------------------------------------------------------

const messageHead = Buffer.from('{"t":"m","s":')
const messageData = Buffer.from(',"d":')
const messageTail = Buffer.from('}')

/** A text payload as the protocol carries it: a JSON string literal, serialized once per message. */
export function textPayload (text: string): Buffer {
  return Buffer.from(JSON.stringify(text))
}

/** The frame of one message to one session: `{"t":"m","s":<seq>,"d":<payload>}`, or the binary header and bytes. */
export function messageFrame (seq: number, payload: Buffer, binary: boolean): Buffer {
  if (binary) {
    const frame = Buffer.allocUnsafe(binaryHeaderBytes + payload.length)
    frame.writeUInt32BE(Math.floor(seq / 0x1_0000_0000), 0)
    frame.writeUInt32BE(seq % 0x1_0000_0000, 4)
    payload.copy(frame, binaryHeaderBytes)
    return frame
  }
  const seqText = String(seq)
  const length = messageHead.length + seqText.length + messageData.length + payload.length + messageTail.length
  const frame = Buffer.allocUnsafe(length)
  let at = messageHead.copy(frame, 0)
  at += frame.write(seqText, at, 'latin1')
  at += messageData.copy(frame, at)
  at += payload.copy(frame, at)
  messageTail.copy(frame, at)
  return frame
}

export interface ResumeReport {
  outcome: ReplayOutcome
  /** Whether the session's user data and groups were restored. */
  stateRestored: boolean
  /** Messages sent again after the welcome. */
  replayed: number
  /** Messages missed that could not be replayed (the gap of a partial replay). */
  missed: number
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
  /** The client continues from this sequence number: replayed messages, then new ones, follow it. */
  seq: number
  /** null for a new session. */
  resume: ResumeReport | null
}

export function pingFrame (timestamp: number): string {
  return `{"t":"ping","ts":${timestamp}}`
}

// ---- client → server -----------------------------------------------------------------------

export type ClientFrame =
  | { t: 'm', d: string }
  | { t: 'pong', ts?: number }
  | { t: 'ack', s: number }
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
  const { t, d, s } = frame as { t?: unknown, d?: unknown, s?: unknown }
  switch (t) {
    case 'm': return typeof d === 'string' ? { t, d } : undefined
    case 'pong': return { t }
    case 'ack': return typeof s === 'number' && Number.isSafeInteger(s) && s >= 0 ? { t, s } : undefined
    case 'token': return { t }
    default: return typeof t === 'string' ? { t: 'unknown' } : undefined
  }
}
