import { setImmediate as nextTurn } from 'node:timers/promises'
import { WebSocket } from 'ws'
import type { Connection } from './connection.js'
import type { EncodedMessage } from './message.js'

/**
 * Honest counts of one broadcast.
 * - `total`: recipients after exclusions;
 * - `sent`: frames handed to the socket for delivery (not proof of receipt);
 * - `failed`: sockets that refused the frame;
 * - `skipped`: recipients that were closing or closed by the time their turn came;
 * - `dropped`: recipients whose outbound buffer was full (`maxBufferedAmount`): not sent,
 *   and, with `slowConsumerPolicy: 'disconnect'`, closed with 4002.
 */
export interface BroadcastResult {
  total: number
  sent: number
  failed: number
  skipped: number
  dropped: number
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
  message: EncodedMessage,
  exclude: ReadonlySet<string> | undefined,
  perTurn: number,
  gate: OutboundGate
): Promise<BroadcastResult> {
  const targets: Connection[] = []
  for (const connection of recipients) {
    if (exclude === undefined || !exclude.has(connection.id)) targets.push(connection)
  }
  const result: BroadcastResult = { total: targets.length, sent: 0, failed: 0, skipped: 0, dropped: 0 }
  const bytes = byteLength(message)
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
    if (!gate(connection, bytes)) result.dropped++
    else if (writeTo(connection, message)) result.sent++
    else result.failed++
  }
  return result
}
