/**
 * Local delivery: one message to this instance's recipients, encoded and framed once and
 * shared by every socket, never waiting on a slow socket.
 */
import { setImmediate as nextTurn } from 'node:timers/promises'
import { WebSocket } from 'ws'
import type { StreamEntry } from './adapter/adapter.js'
import type { Connection } from './connection.js'
import type { EncodedMessage } from './message.js'
import { binaryMessageFrame, textMessageFrame, textPayload } from './protocol.js'
import { DeflatedFrames, type SharedDeflate } from './shared-deflate.js'
import { wholeFrame } from './frame.js'
import { idleTransport, plainFrameTransport, serverWindowBits, sharedDeflateOf } from './wire.js'
import { writeCoalesced } from './write-coalescing.js'

/**
 * Honest counts of one broadcast on this instance.
 * - `total`: local recipients after exclusions;
 * - `sent`: frames handed to the socket for delivery (not proof of receipt);
 * - `failed`: sockets that refused the frame;
 * - `skipped`: recipients that were closing or closed by the time their turn came;
 * - `dropped`: recipients whose outbound buffer was full (`maxBufferedAmount`): not sent,
 *   and, with `slowConsumerPolicy: 'disconnect'`, closed with 4002;
 * - `published`: whether the message reached the adapter: stored in its stream's log (what a
 *   resuming `stabilizer.v1` client is replayed) and handed to every other instance. False
 *   when the adapter's shared store was unreachable: only local clients got it.
 */
export interface BroadcastResult {
  total: number
  sent: number
  failed: number
  skipped: number
  dropped: number
  published: boolean
}

/** Where a message stands in its stream, once published. */
type Position = Pick<StreamEntry, 'stream' | 'epoch' | 'seq'> & { readonly ts?: number }

/**
 * One message on its way out: its protocol payload (what streams carry), the plain message
 * for plain clients, and the `stabilizer.v1` frame of its position, each built once on first
 * need and shared by every recipient.
 */
export class Outbound {
  position: Position | undefined = undefined
  private plainMessage: EncodedMessage | undefined
  private plainWhole: Buffer | undefined = undefined
  private plainBytes = -1
  private protocol: EncodedMessage | undefined = undefined
  private protocolWhole: Buffer | undefined = undefined
  private plainDeflated: DeflatedFrames | undefined = undefined
  private protocolDeflated: DeflatedFrames | undefined = undefined

  private constructor (readonly payload: Buffer, readonly binary: boolean, plain: EncodedMessage | undefined) {
    this.plainMessage = plain
  }

  /** A message of the app's (as `encodeMessage` made it). */
  static of (encoded: EncodedMessage): Outbound {
    const payload = encoded.binary ? encoded.data as Buffer : textPayload(String(encoded.data))
    return new Outbound(payload, encoded.binary, encoded)
  }

  /** A message that came from the adapter (another instance published it). */
  static fromEntry (entry: StreamEntry): Outbound {
    const outbound = new Outbound(entry.payload, entry.binary, undefined)
    outbound.position = entry
    return outbound
  }

  /** The message as a plain client receives it. */
  get plain (): EncodedMessage {
    this.plainMessage ??= { data: Buffer.from(JSON.parse(this.payload.toString()) as string), binary: false }
    return this.plainMessage
  }

  /** The plain message as one whole WebSocket frame. */
  get plainFrame (): Buffer {
    this.plainWhole ??= wholeFrame(plainBytesOf(this.plain), this.plain.binary)
    return this.plainWhole
  }

  /** The message as a `stabilizer.v1` client receives it: with its position, or without one when unpublished. */
  get protocolFrame (): EncodedMessage {
    if (this.protocol === undefined) {
      const at = this.position
      const frame = this.binary
        ? binaryMessageFrame(at?.stream ?? '', at?.epoch ?? '', at?.seq ?? 0, this.payload)
        : textMessageFrame(at?.stream ?? '', at?.epoch ?? '', at?.seq ?? 0, this.payload)
      this.protocol = { data: frame, binary: this.binary }
    }
    return this.protocol
  }

  /** The protocol frame as one whole WebSocket frame. */
  get protocolWholeFrame (): Buffer {
    this.protocolWhole ??= wholeFrame(this.protocolFrame.data as Buffer, this.binary)
    return this.protocolWhole
  }

  /**
   * The message for a socket the shared compressor serves: deflated and framed once per
   * window size and kind (plain or `stabilizer.v1`), shared by every such recipient; under
   * the compressor's threshold, the uncompressed whole frame (valid on a compressing connection).
   */
  sharedFrame (deflate: SharedDeflate, windowBits: number, protocol: boolean): Buffer {
    const data = protocol ? this.protocolFrame.data as Buffer : plainBytesOf(this.plain)
    if (data.length < deflate.threshold) return protocol ? this.protocolWholeFrame : this.plainFrame
    const frames = protocol
      ? (this.protocolDeflated ??= new DeflatedFrames(data, this.binary))
      : (this.plainDeflated ??= new DeflatedFrames(data, this.binary))
    return frames.frameFor(deflate, windowBits)
  }

  /** Bytes this message adds to a connection's outbound buffer. */
  sizeFor (connection: Connection): number {
    if (connection.protocol) return (this.protocolFrame.data as Buffer).length
    if (this.plainBytes < 0) this.plainBytes = byteLength(this.plain)
    return this.plainBytes
  }

  /** What to write to `connection`. */
  frameFor (connection: Connection): EncodedMessage {
    return connection.protocol ? this.protocolFrame : this.plain
  }
}

/** Decides whether a message of `bytes` may be queued on a connection (the slow-consumer check). */
export type OutboundGate = (connection: Connection, bytes: number) => boolean

/** The byte length of an encoded message. */
export function byteLength (message: EncodedMessage): number {
  return typeof message.data === 'string' ? Buffer.byteLength(message.data) : message.data.length
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
  exclude: readonly string[] | undefined,
  perTurn: number,
  gate: OutboundGate
): Promise<Omit<BroadcastResult, 'published'>> {
  const excluded = exclude === undefined || exclude.length === 0 ? undefined : new Set(exclude)
  const targets: Connection[] = []
  for (const connection of recipients) {
    if (excluded === undefined || !excluded.has(connection.id)) targets.push(connection)
  }
  const result = { total: targets.length, sent: 0, failed: 0, skipped: 0, dropped: 0 }
  let inTurn = 0
  for (const connection of targets) {
    if (inTurn === perTurn) {
      inTurn = 0
      await nextTurn()
    }
    if (connection.state !== 'open' || connection.socket.readyState !== WebSocket.OPEN) {
      result.skipped++
      continue
    }
    inTurn++
    if (connection.catchUp?.holds(message) === true) result.sent++
    else if (!gate(connection, message.sizeFor(connection))) result.dropped++
    else if (deliver(connection, message)) result.sent++
    else result.failed++
  }
  return result
}

/**
 * Hands one broadcast to one open recipient whose sender is idle: a client without
 * compression gets the shared whole frame written straight to its transport (one buffer, no
 * per-socket framing); one that negotiated the shared compressor gets the message deflated
 * once for all such recipients; any other goes through `send()`. Direct writes of one callback
 * to one socket leave together.
 */
function deliver (connection: Connection, message: Outbound): boolean {
  const { socket, protocol } = connection
  const transport = plainFrameTransport(socket)
  if (transport !== undefined) {
    writeCoalesced(transport, protocol ? message.protocolWholeFrame : message.plainFrame)
    return true
  }
  const deflate = sharedDeflateOf(socket)
  const idle = deflate === undefined ? undefined : idleTransport(socket)
  if (idle !== undefined) {
    writeCoalesced(idle, message.sharedFrame(deflate!, serverWindowBits(socket), protocol))
    return true
  }
  return writeTo(connection, message.frameFor(connection))
}

function plainBytesOf (message: EncodedMessage): Buffer {
  return typeof message.data === 'string' ? Buffer.from(message.data) : message.data
}
