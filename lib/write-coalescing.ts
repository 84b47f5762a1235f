/**
 * Frames written straight to a transport within one callback of the event loop leave it in at
 * most two writes: a burst of broadcasts costs each socket two system calls, and its reader
 * about as many reads, whatever the number of messages.
 */
import type { Duplex } from 'node:stream'
import type { WebSocket } from 'ws'
import { transportOf } from './wire.js'

/** Transports corked by this module, uncorked together once the current callback is done. */
let corked = new Set<Duplex>()
/** Transports that took a frame at once in this callback: their next frame corks them. */
const written = new Set<Duplex>()
let scheduled = false

function endOfCallback (): void {
  scheduled = false
  written.clear()
  if (corked.size === 0) return
  const batch = corked
  corked = new Set()
  for (const transport of batch) uncork(transport)
}

function untilEndOfCallback (): void {
  if (scheduled) return
  scheduled = true
  process.nextTick(endOfCallback)
}

function uncork (transport: Duplex): void {
  try {
    transport.uncork()
  } catch (err) {
    transport.destroy(err as Error) // never left corked: its connection closes instead
  }
}

/**
 * Holds back what is written to the socket's transport until the current callback is done,
 * then sends it in one write. A transport with bytes already waiting is left alone: the stream
 * queues new writes behind them and sends the queue in one write once the kernel takes more.
 * Order is kept either way: everything written meanwhile (a ws send, a ping) joins the same
 * queue.
 */
export function holdWrites (socket: WebSocket): void {
  hold(transportOf(socket))
}

function hold (transport: Duplex | undefined): void {
  if (transport === undefined || transport.writableLength !== 0 || corked.has(transport)) return
  transport.cork()
  corked.add(transport)
  untilEndOfCallback()
}

/**
 * Writes `frame` to `transport`. The first frame of a callback to a transport leaves at once (a
 * lone broadcast reaches its first readers while the loop is still writing to the others); the
 * next ones are held and leave together when the callback is done. Once a stream's worth (its
 * high-water mark) is held, it goes now: what the kernel does not take then waits in the
 * stream, where the slow-consumer check sees it.
 */
export function writeCoalesced (transport: Duplex, frame: Buffer): void {
  if (!corked.has(transport)) {
    if (!written.has(transport)) {
      written.add(transport)
      untilEndOfCallback()
      transport.write(frame)
      return
    }
    hold(transport)
  }
  transport.write(frame)
  if (transport.writableLength >= transport.writableHighWaterMark && corked.delete(transport)) uncork(transport)
}

/**
 * Outbound bytes a socket's reader has yet to take: ws's `bufferedAmount`, less what is held
 * back for the current callback's one write (those wait on the callback, not on the reader).
 */
export function waitingBytes (socket: WebSocket): number {
  const buffered = socket.bufferedAmount
  if (buffered === 0) return 0
  const transport = transportOf(socket)
  return transport !== undefined && corked.has(transport) ? buffered - transport.writableLength : buffered
}
