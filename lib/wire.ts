/** All knowledge of `ws` internals: shared frames written straight to idle transports, pongs read off the socket, ws's error close codes. */
import type { Duplex } from 'node:stream'
import { WebSocket } from 'ws'
import type { SharedDeflate } from './shared-deflate.js'

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

/** The socket's transport (ws's `_socket`, stable since v1), or undefined before it is attached. */
export function transportOf (socket: WebSocket): Duplex | undefined {
  return (socket as unknown as { _socket?: Duplex })._socket
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

const kSharedDeflate = Symbol('fastify-websocket-stabilizer.shared-deflate')

/** What the shared compressor relies on of a socket's `ws` PerMessageDeflate (ws 8, lib/permessage-deflate.js). */
interface PerMessageDeflateInternals {
  /** The server's perMessageDeflate options, copied for every socket (`{ ...options, isServer, maxPayload }`). */
  _options?: { [kSharedDeflate]?: SharedDeflate }
  _isServer?: boolean
  /** The parameters agreed with the client. */
  params?: { server_no_context_takeover?: boolean, server_max_window_bits?: number } | null
}

/**
 * ws's perMessageDeflate options carrying the shared compressor. ws copies these options into
 * each socket's PerMessageDeflate, so a socket names the compressor of the server that
 * negotiated it: no lookup by server, and a socket of another server is never served by it.
 */
export function withSharedDeflate<T extends object> (perMessageDeflate: T, deflate: SharedDeflate): T {
  return { ...perMessageDeflate, [kSharedDeflate]: deflate }
}

function negotiatedDeflate (socket: WebSocket): PerMessageDeflateInternals | undefined {
  return (socket as unknown as { _sender?: SenderInternals })._sender?._extensions?.['permessage-deflate'] as PerMessageDeflateInternals | undefined
}

/**
 * The shared compressor serving a socket, or undefined when its messages must go through
 * `send()`: it did not negotiate permessage-deflate with a server using the shared strategy,
 * or without server_no_context_takeover (a message would then depend on the ones before it),
 * or with a window zlib cannot make raw streams for (8 bits). These fields are `ws` internals
 * (stable through ws 8); if they change, this returns undefined and every broadcast is
 * compressed by ws per socket: slower, still correct. test/wire.test.ts fails if the
 * installed `ws` no longer lets the shared compressor serve a socket.
 */
export function sharedDeflateOf (socket: WebSocket): SharedDeflate | undefined {
  const negotiated = negotiatedDeflate(socket)
  const deflate = negotiated?._options?.[kSharedDeflate]
  if (deflate === undefined || negotiated!._isServer !== true || negotiated!.params?.server_no_context_takeover !== true) return undefined
  return serverWindowBits(socket) >= 9 ? deflate : undefined
}

/** The server window (LZ77 window bits, 8–15) a socket negotiated; 15 when the client did not limit it. */
export function serverWindowBits (socket: WebSocket): number {
  return negotiatedDeflate(socket)?.params?.server_max_window_bits ?? 15
}

/** An empty ping, as a server sends it (FIN, opcode 0x9, no payload). */
const emptyPing = Buffer.from([0x89, 0x00])

/** Sends an empty protocol ping: the prepared frame straight to an idle transport, else through ws's `ping()`. */
export function sendEmptyPing (socket: WebSocket): void {
  const transport = idleTransport(socket)
  if (transport !== undefined) transport.write(emptyPing)
  else socket.ping()
}

/** What reading pongs off the transport relies on of `ws`'s per-socket Receiver (ws 8, lib/receiver.js). */
interface ReceiverInternals {
  /** The parser's state; 0 (GET_INFO) between frames. */
  _state?: number
  /** Bytes of a frame received but not yet parsed. */
  _bufferedBytes?: number
  /** The last frame's opcode: 0x8 once a close frame came (ws ignores everything after it). */
  _opcode?: number
  /** Bytes written to the Receiver (a Writable) and not yet processed (public Writable API). */
  writableLength: number
  write: (chunk: unknown, encoding?: unknown, callback?: unknown) => boolean
}

/** ws's Receiver state between two frames. */
const RECEIVER_BETWEEN_FRAMES = 0

/**
 * Whether a chunk the transport delivered is exactly one whole pong from a client (RFC 6455
 * §5.5.3): FIN with opcode 0xA and clear RSV bits, masked, a payload of at most 125 bytes, and
 * nothing after it.
 */
function isWholePong (chunk: Buffer): boolean {
  if (chunk.length < 6 || chunk.length > 131 || chunk[0] !== 0x8a) return false
  const second = chunk[1]
  return (second & 0x80) !== 0 && chunk.length === 6 + (second & 0x7f)
}

/**
 * Takes a client's pongs off the transport before ws parses them, and calls `onPong` instead of
 * ws emitting 'pong', while `onPong` is the socket's only 'pong' listener.
 * ws parses every inbound chunk through its Receiver, a Writable stream: a pong costs a stream
 * write with its deferred callback, the frame parse and two 'pong' emits. An idle connection's
 * pong arrives as a chunk of its own; where ws's parser stands between frames, with nothing
 * buffered and no close received, that chunk is a whole frame and ws would have done nothing
 * else with it than emit 'pong' (whose payload the stabilizer does not read). Anything else — a
 * chunk holding more than the pong, half a frame, a frame ws would reject, a socket no longer
 * open, an app that listens to 'pong' itself — goes to ws as before. These fields are `ws`
 * internals (stable through ws 8); if they change, this returns false and every pong goes
 * through ws: slower, still correct. test/heartbeat-sockets.test.ts fails if the installed
 * `ws` no longer lets pongs be taken.
 */
export function takePongs<S extends WebSocket> (socket: S, onPong: (this: S) => void): boolean {
  const receiver = (socket as unknown as { _receiver?: ReceiverInternals })._receiver
  if (receiver === undefined || receiver._state !== RECEIVER_BETWEEN_FRAMES || receiver._bufferedBytes !== 0 || typeof receiver.write !== 'function' || typeof receiver.writableLength !== 'number') return false
  const write = receiver.write
  receiver.write = function (chunk, encoding, callback) {
    if (
      isWholePong(chunk as Buffer) &&
      receiver._state === RECEIVER_BETWEEN_FRAMES && receiver._bufferedBytes === 0 && receiver._opcode !== 0x8 && receiver.writableLength === 0 &&
      socket.readyState === WebSocket.OPEN && socket.listenerCount('pong') === 1 && socket.listenerCount('pong', onPong) === 1
    ) {
      onPong.call(socket)
      return true
    }
    return write.call(this, chunk, encoding, callback)
  }
  return true
}

/** Close codes `ws` sends after the protocol errors it raises (its own mapping is not exported). */
const wsErrorCloseCodes: Record<string, number> = {
  WS_ERR_UNSUPPORTED_MESSAGE_LENGTH: 1009,
  WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH: 1009,
  WS_ERR_INVALID_UTF8: 1007,
  WS_ERR_TOO_MANY_BUFFERED_PARTS: 1008
}

/** The close code `ws` sent after raising `err`, or undefined when `err` is not one of its protocol errors. */
export function protocolErrorCloseCode (err: Error & { code?: string }): number | undefined {
  if (typeof err.code !== 'string' || !err.code.startsWith('WS_ERR_')) return undefined
  return wsErrorCloseCodes[err.code] ?? 1002
}

/**
 * Whether a socket's transport was destroyed. Node calls a pending write's callback with no
 * error when the stream was destroyed before the write completed, so `ws` reports success
 * for bytes that never left; checking the transport when the callback fires keeps
 * `sendToClient` honest. `_socket` is ws's (stable since v1) handle on the net.Socket; if it
 * ever disappears this check degrades to trusting the callback, and test/fanout.test.ts fails.
 */
export function transportDestroyed (socket: WebSocket): boolean {
  return transportOf(socket)?.destroyed === true
}

/** Reasons for the closes `ws` starts itself after a protocol error, which it sends without one. */
const wsCloseReasons: Record<number, string> = {
  1002: 'protocol error',
  1007: 'invalid UTF-8',
  1008: 'too many fragments',
  1009: 'message too big'
}

const close = WebSocket.prototype.close

/**
 * The `close` of a stabilized socket: ws closes with 1009 (and 1002, 1007) after a bad inbound
 * frame without a reason; the peer then learns which limit it hit. One shared function, set on
 * the socket like the stabilizer's `emit`.
 */
function closeWithReason (this: WebSocket, code?: number, reason?: string | Buffer): void {
  close.call(this, code, reason ?? (code === undefined ? undefined : wsCloseReasons[code]))
}

/** Gives a socket's ws-initiated closes a reason. */
export function giveCloseReasons (socket: WebSocket): void {
  socket.close = closeWithReason
}
