/**
 * What ties a socket to its connection: listeners shared by every socket, interception of
 * pongs, over-the-rate messages and `stabilizer.v1` control frames, and heartbeat frames out.
 */
import { WebSocket } from 'ws'
import type { FastifyBaseLogger } from 'fastify'
import type { Connection } from './connection.js'
import type { HeartbeatScheduler } from './heartbeat.js'
import type { ResolvedOptions } from './options.js'
import { parseClientFrame, pingFrame, type ClientFrame } from './protocol.js'
import { InboundBudget, inboundSize } from './rate-limit.js'
import { giveCloseReasons, protocolErrorCloseCode, sendEmptyPing, takePongs } from './wire.js'

const kConnection = Symbol('fastify-websocket-stabilizer.connection')
type TrackedSocket = WebSocket & { [kConnection]?: Connection }

/** What the binding hands back to the stabilizer. */
export interface BindingHost {
  /** Per-message metrics, when on. */
  readonly metrics: { received: (data: unknown) => void } | undefined
  /** The socket emitted 'close'. */
  closed: (connection: Connection, code: number, reason: Buffer) => void
  /** ws raised a protocol error and is closing the socket with `code`. */
  protocolError: (connection: Connection, code: number) => void
  /** An inbound message over the connection's rate budget. */
  overRate: (connection: Connection) => void
  /** A `stabilizer.v1` client asked for a reconnect token. */
  tokenRequested: (connection: Connection) => void
  /** A malformed `stabilizer.v1` frame (closed with 1002). */
  malformed: (connection: Connection) => void
}

/** Whether `socket` is already registered. */
export function isBound (socket: WebSocket): boolean {
  return (socket as TrackedSocket)[kConnection] !== undefined
}

export class SocketBinding {
  private readonly onClose: (this: TrackedSocket, code: number, reason: Buffer) => void
  private readonly onError: (this: TrackedSocket, err: Error) => void
  private readonly onMessage: (this: TrackedSocket, data: unknown) => void
  private readonly onPong: (this: TrackedSocket) => void
  private readonly onPing: (this: TrackedSocket) => void
  /** Takes custom pongs and over-the-rate messages out before any 'message' listener; undefined when neither applies. */
  private readonly interceptMessages: ((this: TrackedSocket, event: string | symbol, ...args: unknown[]) => boolean) | undefined
  /** The emit of `stabilizer.v1` sockets: control frames are handled here, app messages are unwrapped. */
  private readonly interceptProtocol: (this: TrackedSocket, event: string | symbol, ...args: unknown[]) => boolean
  private readonly rateLimited: boolean

  constructor (private readonly options: ResolvedOptions, private readonly heartbeat: HeartbeatScheduler | undefined, host: BindingHost, private readonly log: FastifyBaseLogger) {
    const { anyMessageIsAlive, isCustomPong, inboundMessageRate, inboundByteRate } = options
    this.rateLimited = inboundMessageRate > 0 || inboundByteRate > 0
    this.onClose = function (code, reason) {
      const connection = this[kConnection]
      if (connection !== undefined) host.closed(connection, code, reason)
    }
    this.onError = function (err) {
      // ws closes the socket after an error; an unclean peer is expected, not a server fault.
      const connection = this[kConnection]
      log.debug({ err, clientId: connection?.id }, 'websocket error')
      const code = protocolErrorCloseCode(err)
      if (connection !== undefined && connection.state === 'open' && code !== undefined) host.protocolError(connection, code)
    }
    this.onMessage = function (data) {
      const connection = this[kConnection]
      if (connection === undefined) return
      host.metrics?.received(data)
      connection.lastActivityAt = Date.now()
      if (anyMessageIsAlive && heartbeat !== undefined) heartbeat.alive(connection, false)
    }
    this.onPong = function () {
      const connection = this[kConnection]
      if (connection !== undefined && heartbeat !== undefined) heartbeat.alive(connection, true)
    }
    this.onPing = function () {
      const connection = this[kConnection]
      if (connection !== undefined && heartbeat !== undefined) heartbeat.alive(connection, false)
    }
    const admit = (connection: Connection, data: unknown): boolean => {
      if (connection.state === 'open' && connection.inbound!.take(inboundSize(data), performance.now())) return true
      host.overRate(connection)
      return false
    }
    // Custom pongs and messages over the inbound rate are taken out before any 'message'
    // listener sees them, whoever registered the listener (the route handler, or code the
    // stabilizer never wraps): the socket's own emit is replaced, for these sockets only.
    const customPongs = heartbeat !== undefined && options.heartbeatType === 'custom'
    const emit = WebSocket.prototype.emit
    this.interceptMessages = !customPongs && !this.rateLimited
      ? undefined
      : function (event, ...args) {
        if (event === 'message') {
          const connection = this[kConnection]
          if (connection !== undefined) {
            if (customPongs && isCustomPong(args[0] as Buffer, args[1] as boolean)) {
              connection.lastActivityAt = Date.now()
              heartbeat?.alive(connection, true)
              return true
            }
            if (connection.inbound !== undefined && !admit(connection, args[0])) return true
          }
        }
        return emit.call(this, event, ...args)
      }
    const control = (connection: Connection, frame: ClientFrame | undefined): void => {
      switch (frame?.t) {
        case 'pong':
          heartbeat?.alive(connection, true)
          return
        case 'token':
          host.tokenRequested(connection)
          return
        case 'unknown':
          return // a newer client's frame: ignored
        default:
          host.malformed(connection)
      }
    }
    this.interceptProtocol = function (event, ...args) {
      if (event !== 'message') return emit.call(this, event, ...args)
      const connection = this[kConnection]
      if (connection === undefined) return emit.call(this, event, ...args)
      if (connection.inbound !== undefined && !admit(connection, args[0])) return true
      if (args[1] === true) return emit.call(this, event, ...args) // binary: the app's bytes as they are
      const frame = parseClientFrame(messageText(args[0]))
      if (frame?.t === 'm') return emit.call(this, event, Buffer.from(frame.d), false)
      connection.lastActivityAt = Date.now()
      control(connection, frame)
      return true
    }
  }

  /** Attaches the shared listeners and interceptions to the connection's socket. */
  bind (connection: Connection): void {
    const socket = connection.socket as TrackedSocket
    socket[kConnection] = connection
    socket.on('close', this.onClose)
    socket.on('error', this.onError)
    socket.on('message', this.onMessage)
    giveCloseReasons(socket)
    if (this.heartbeat !== undefined) {
      if (this.options.heartbeatType === 'ping') {
        socket.on('pong', this.onPong)
        takePongs(socket, this.onPong)
      }
      if (this.options.anyMessageIsAlive) socket.on('ping', this.onPing)
    }
    if (this.rateLimited) connection.inbound = new InboundBudget(this.options.inboundMessageRate, this.options.inboundByteRate, performance.now())
    if (connection.protocol) socket.emit = this.interceptProtocol
    else if (this.interceptMessages !== undefined) socket.emit = this.interceptMessages
  }

  /** Sends the connection's heartbeat in its kind (protocol ping, `stabilizer.v1` frame or custom message); false if it could not. */
  sendHeartbeat (connection: Connection): boolean {
    if (connection.state !== 'open' || connection.socket.readyState !== WebSocket.OPEN) return false
    try {
      if (connection.protocol) {
        // Nothing may precede the welcome; the ping waits for the next round.
        if (connection.catchUp === undefined || !connection.catchUp.waitingForWelcome) connection.socket.send(pingFrame(Date.now()))
      } else if (this.options.heartbeatType === 'ping') {
        sendEmptyPing(connection.socket)
      } else {
        connection.socket.send(this.options.customPing(Date.now()))
      }
      return true
    } catch (err) {
      this.log.debug({ err, clientId: connection.id }, 'websocket heartbeat not sent')
      return false
    }
  }
}

/** The text of an inbound text message as `ws` delivers it (a Buffer unless the app changed binaryType). */
function messageText (data: unknown): string {
  if (Buffer.isBuffer(data)) return data.toString()
  if (Array.isArray(data)) return Buffer.concat(data as Buffer[]).toString()
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString()
  return String(data)
}

/** The connection a code path holds for `socket`, if the stabilizer registered it. */
export function connectionOf (socket: WebSocket): Connection | undefined {
  return (socket as TrackedSocket)[kConnection]
}
