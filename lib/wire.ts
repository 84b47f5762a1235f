import type { Duplex } from 'node:stream'
import type { WebSocket } from 'ws'

/**
 * A broadcast framed once: the whole unmasked data frame a server sends (RFC 6455 §5.2: FIN,
 * opcode, payload length, payload), built once and written as is to every plain recipient,
 * instead of `ws` building a header and issuing a corked two-buffer write per socket.
 */
export function wholeFrame (payload: Buffer, binary: boolean): Buffer {
  const length = payload.length
  const headerLength = length < 126 ? 2 : length < 65_536 ? 4 : 10
  const frame = Buffer.allocUnsafe(headerLength + length)
  frame[0] = 0x80 | (binary ? 0x2 : 0x1)
  if (headerLength === 2) {
    frame[1] = length
  } else if (headerLength === 4) {
    frame[1] = 126
    frame.writeUInt16BE(length, 2)
  } else {
    frame[1] = 127
    frame.writeUInt32BE(Math.floor(length / 2 ** 32), 2)
    frame.writeUInt32BE(length >>> 0, 6)
  }
  payload.copy(frame, headerLength)
  return frame
}

/** What the direct write relies on of `ws`'s per-socket Sender (ws 8, lib/sender.js). */
interface SenderInternals {
  _socket?: Duplex
  _state?: number
  _queue?: unknown[]
  _firstFragment?: boolean
  /** The negotiated extensions by name (`permessage-deflate` when compression was agreed). */
  _extensions?: Record<string, unknown>
}

/** ws's Sender state when it is neither compressing nor reading a Blob. */
const SENDER_IDLE = 0

/**
 * The transport a whole frame may be written to directly, or undefined when `send()` must be
 * used. A frame written to the transport lands exactly where `send()` would have put it when
 * ws's sender is idle: nothing queued behind a compression or a Blob read, and not between
 * the fragments of a message the app is streaming. These fields are `ws` internals (stable
 * through ws 8); if they change, this returns undefined and every write goes through
 * `send()`: slower, still correct. test/wire.test.ts fails if the installed `ws` no longer
 * allows the direct write.
 */
export function idleTransport (socket: WebSocket): Duplex | undefined {
  const sender = (socket as unknown as { _sender?: SenderInternals })._sender
  if (sender === undefined || sender._state !== SENDER_IDLE || sender._firstFragment !== true || sender._queue?.length !== 0) return undefined
  return sender._socket
}

/**
 * The transport a broadcast's shared plain frame may be written to: an idle transport of a
 * socket that did not negotiate permessage-deflate. Where compression was agreed, `send()`
 * compresses the message (above ws's threshold), which the shared plain frame would skip.
 */
export function plainFrameTransport (socket: WebSocket): Duplex | undefined {
  const extensions = (socket as unknown as { _sender?: SenderInternals })._sender?._extensions
  if (extensions === undefined || 'permessage-deflate' in extensions) return undefined
  return idleTransport(socket)
}

/** An empty ping, as a server sends it (FIN, opcode 0x9, no payload). */
const emptyPing = Buffer.from([0x89, 0x00])

/** Sends an empty protocol ping: the prepared frame straight to an idle transport, else through ws's `ping()`. */
export function sendEmptyPing (socket: WebSocket): void {
  const transport = idleTransport(socket)
  if (transport !== undefined) transport.write(emptyPing)
  else socket.ping()
}
