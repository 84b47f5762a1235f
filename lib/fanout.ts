import { setImmediate as nextTurn } from 'node:timers/promises'
import { WebSocket } from 'ws'
import type { Connection } from './connection.js'
import type { EncodedMessage } from './message.js'
import { messageFrame, textPayload } from './protocol.js'
import { DeflatedFrames, type SharedDeflate } from './shared-deflate.js'
import { idleTransport, plainFrameTransport, serverWindowBits, sharedDeflateOf, wholeFrame } from './wire.js'

/**
 * Honest counts of one broadcast.
 * - `total`: recipients after exclusions;
 * - `sent`: frames handed to the socket for delivery (not proof of receipt);
 * - `failed`: sockets that refused the frame;
 * - `skipped`: recipients that were closing or closed by the time their turn came;
 * - `dropped`: recipients whose outbound buffer was full (`maxBufferedAmount`): not sent,
 *   and, with `slowConsumerPolicy: 'disconnect'`, closed with 4002;
 * - `queued`: disconnected `stabilizer.v1` clients whose retained session logged the message
 *   for replay when they resume (not counted in `total`).
 */
export interface BroadcastResult {
  total: number
  sent: number
  failed: number
  skipped: number
  dropped: number
  queued: number
}

/**
 * One message on its way out: encoded once for plain clients and, on first need, once more
 * as the protocol's payload for `stabilizer.v1` sessions (which frame it with their own
 * sequence number).
 */
export class Outbound {
  private payload: Buffer | undefined = undefined
  private plain: Buffer | undefined = undefined
  private frame: Buffer | undefined = undefined
  private deflated: DeflatedFrames | undefined = undefined
  private plainBytes = -1

  constructor (readonly encoded: EncodedMessage) {}

  /** The payload as the protocol carries it (a JSON string literal for text, the bytes for binary). */
  get protocolPayload (): Buffer {
    this.payload ??= this.encoded.binary ? this.encoded.data as Buffer : textPayload(String(this.encoded.data))
    return this.payload
  }

  /** Bytes this message adds to a connection's outbound buffer (the protocol's frame is ~30 bytes more). */
  sizeFor (connection: Connection): number {
    if (connection.replay !== undefined) return this.protocolPayload.length + 30
    if (this.plainBytes < 0) this.plainBytes = byteLength(this.encoded)
    return this.plainBytes
  }

  /** The plain message's bytes. */
  private get plainPayload (): Buffer {
    const { data } = this.encoded
    this.plain ??= typeof data === 'string' ? Buffer.from(data) : data
    return this.plain
  }

  /** The plain message as one whole WebSocket frame, built on first need and shared by every plain recipient. */
  get plainFrame (): Buffer {
    this.frame ??= wholeFrame(this.plainPayload, this.encoded.binary)
    return this.frame
  }

  /**
   * The message for a socket the shared compressor serves: deflated and framed once per
   * window size, shared by every such recipient; under the compressor's threshold, the
   * plain frame (an uncompressed message is valid on a compressing connection).
   */
  sharedFrame (deflate: SharedDeflate, windowBits: number): Buffer {
    if (this.plainPayload.length < deflate.threshold) return this.plainFrame
    this.deflated ??= new DeflatedFrames(this.plainPayload, this.encoded.binary)
    return this.deflated.frameFor(deflate, windowBits)
  }

  /** What to write to `connection`: the plain message, or the session's next numbered frame (logged for replay). */
  frameFor (connection: Connection): EncodedMessage {
    const replay = connection.replay
    if (replay === undefined) return this.encoded
    const payload = this.protocolPayload
    const { binary } = this.encoded
    return { data: messageFrame(replay.append(payload, binary), payload, binary), binary }
  }
}

/** Decides whether a message of `bytes` may be queued on a connection (the slow-consumer check). */
export type OutboundGate = (connection: Connection, bytes: number) => boolean

/** The byte length of an encoded message. */
export function byteLength (message: EncodedMessage): number {
  return typeof message.data === 'string' ? Buffer.byteLength(message.data) : message.data.length
}

/**
 * Whether a socket's transport was destroyed. Node calls a pending write's callback with no
 * error when the stream was destroyed before the write completed, so `ws` reports success
 * for bytes that never left; checking the transport when the callback fires keeps
 * `sendToClient` honest. `_socket` is ws's (stable since v1) handle on the net.Socket; if it
 * ever disappears this check degrades to trusting the callback, and test/fanout.test.ts fails.
 */
export function transportDestroyed (socket: WebSocket): boolean {
  return (socket as unknown as { _socket?: { destroyed?: boolean } })._socket?.destroyed === true
}

/** Hands one frame to one connection's socket; false when it is not open or refuses it. */
export function writeTo (connection: Connection, message: EncodedMessage, callback?: (err?: Error) => void): boolean {
  if (connection.state !== 'open' || connection.socket.readyState !== WebSocket.OPEN) return false
  try {
    connection.socket.send(message.data, { binary: message.binary }, callback)
    return true
  } catch {
    return false
  }
}

/**
 * Sends `message` to every recipient without awaiting any socket: a slow reader only ever
 * delays itself. Yields to the event loop every `perTurn` sends so a large fan-out never
 * blocks the loop in one piece. Recipients are a snapshot taken at the call.
 */
export async function fanOut (
  recipients: Iterable<Connection>,
  message: Outbound,
  exclude: ReadonlySet<string> | undefined,
  perTurn: number,
  gate: OutboundGate,
  onSkipped?: (connection: Connection, message: Outbound) => void
): Promise<BroadcastResult> {
  const targets: Connection[] = []
  for (const connection of recipients) {
    if (exclude === undefined || !exclude.has(connection.id)) targets.push(connection)
  }
  const result: BroadcastResult = { total: targets.length, sent: 0, failed: 0, skipped: 0, dropped: 0, queued: 0 }
  let inTurn = 0
  for (const connection of targets) {
    if (inTurn === perTurn) {
      inTurn = 0
      await nextTurn()
    }
    if (connection.state !== 'open' || connection.socket.readyState !== WebSocket.OPEN) {
      result.skipped++
      onSkipped?.(connection, message)
      continue
    }
    inTurn++
    if (!gate(connection, message.sizeFor(connection))) result.dropped++
    else if (deliver(connection, message)) result.sent++
    else result.failed++
  }
  return result
}

/**
 * Hands one broadcast to one open recipient whose sender is idle: a plain client without
 * compression gets the shared whole frame written straight to its transport (one buffer, no
 * per-socket framing); one that negotiated the shared compressor gets the message deflated
 * once for all such recipients; any other goes through `send()`.
 */
function deliver (connection: Connection, message: Outbound): boolean {
  if (connection.replay === undefined) {
    const { socket } = connection
    const transport = plainFrameTransport(socket)
    if (transport !== undefined) {
      transport.write(message.plainFrame)
      return true
    }
    const deflate = sharedDeflateOf(socket)
    const idle = deflate === undefined ? undefined : idleTransport(socket)
    if (idle !== undefined) {
      idle.write(message.sharedFrame(deflate!, serverWindowBits(socket)))
      return true
    }
  }
  return writeTo(connection, message.frameFor(connection))
}
