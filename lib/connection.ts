/** One connection's state and lifecycle, and the read-only view of it that the API exposes. */
import type { WebSocket } from 'ws'
import { HeartbeatState } from './heartbeat.js'
import type { InboundBudget } from './rate-limit.js'
import type { AdmissionTicket } from './admission.js'
import type { CatchUp } from './catch-up.js'
import { randomBytes } from 'node:crypto'

/** open → closing (a close was started) → closed (the socket emitted 'close'). */
export type ConnectionState = 'open' | 'closing' | 'closed'

/** Why a connection ended; counted in stats and set on the connection as `closeCause`. */
export type DisconnectCause =
  | 'client_closed' // the peer sent a close frame first
  | 'connection_lost' // the socket ended without a close frame and we had not asked for it
  | 'server_disconnect' // `disconnect()` was called
  | 'replaced' // a newer connection with the same client id took over
  | 'shutdown' // graceful shutdown
  | 'handler_error' // the route handler threw or rejected
  | 'connection_limit' // a manual `connect()` beyond `maxConnections`
  | 'message_too_big' // an inbound message exceeded `maxMessageSize` (ws closed with 1009)
  | 'protocol_error' // the peer broke the protocol (ws closed with 1002 or 1007)
  | 'heartbeat_timeout' // the peer did not answer a heartbeat within `heartbeatTimeout`
  | 'memory_eviction' // evicted to bring user data back under `maxTotalMemory`
  | 'slow_consumer' // its outbound buffer passed `maxBufferedAmount`
  | 'rate_limited' // it sent faster than `inboundMessageRate` / `inboundByteRate`

/** The read-only view of a connection that hooks, `getConnection()` and `request.wsConnection` expose. */
export interface StabilizedConnection {
  /** The client id (from `identify`, the `clientId` route param, or random). */
  readonly id: string
  /** The underlying `ws` socket. Prefer the stabilizer's methods for sending and closing. */
  readonly socket: WebSocket
  readonly state: ConnectionState
  /** `Date.now()` when the connection was registered. */
  readonly connectedAt: number
  /** `Date.now()` of the last inbound message. */
  readonly lastActivityAt: number
  /** The remote address as Fastify resolved it (honours `trustProxy`). */
  readonly remoteAddress: string | undefined
  /** What `connect(clientId, socket, metadata)` was given; `{}` for auto-registered routes. */
  readonly metadata: Readonly<Record<string, unknown>>
  /** Groups the connection has joined. */
  readonly groups: ReadonlySet<string>
  /** Bytes of user data it holds (see `setUserData`). */
  readonly userDataBytes: number
  /** Messages not sent to it because its outbound buffer was full (`slowConsumerPolicy: 'drop'`). */
  readonly droppedMessages: number
  /** The session this connection belongs to (what a reconnect token resumes). */
  readonly sessionId: string
  /**
   * A secret only this connection's client should know: hand it to the client over the socket;
   * it proves the client holds the connection when it asks `POST /reconnect-token` for a token.
   */
  readonly connectionSecret: string
  /** Whether the client negotiated the `stabilizer.v1` protocol (sequence numbers, replay, app-level heartbeats). */
  readonly protocol: boolean
  /** Set once the connection starts closing. */
  readonly closeCause: DisconnectCause | undefined
  /** Round-trip time of the last answered heartbeat, in ms (undefined before the first). */
  readonly lastRtt: number | undefined
  /** Smoothed round-trip time (exponential average, factor 1/8), in ms. */
  readonly smoothedRtt: number | undefined
}

const noGroups: ReadonlySet<string> = new Set()

/**
 * All state that belongs to one socket, with an explicit lifecycle. Kept lean: this object
 * exists once per open connection, so optional state (groups, user data, timers) is
 * allocated only when used.
 */
export class Connection implements StabilizedConnection {
  readonly id: string
  readonly socket: WebSocket
  readonly connectedAt: number
  readonly remoteAddress: string | undefined
  readonly metadata: Readonly<Record<string, unknown>>
  state: ConnectionState = 'open'
  lastActivityAt: number
  closeCause: DisconnectCause | undefined = undefined
  /** The close code the server sent, if it started the close. */
  sentCloseCode: number | undefined = undefined
  /** Set when the server gave up on a close handshake and destroyed the socket. */
  terminated = false
  readonly heartbeat = new HeartbeatState()
  userData: Map<string, { value: unknown, size: number }> | undefined = undefined
  userDataBytes = 0
  droppedMessages = 0
  private session: string | undefined = undefined
  private secret: string | undefined = undefined
  /** What the upgrade's admission still holds for this connection (its per-IP count), released once at close. */
  ticket: AdmissionTicket | undefined = undefined
  /** Inbound token buckets, when rate limiting is on. */
  inbound: InboundBudget | undefined = undefined
  /** Whether the client speaks `stabilizer.v1`. */
  readonly protocol: boolean
  /** Set while the positions of some of its streams are being read: what reaches it meanwhile waits here. */
  catchUp: CatchUp | undefined = undefined
  private groupSet: Set<string> | undefined = undefined
  private closeTimer: NodeJS.Timeout | undefined = undefined
  private closedWaiters: Array<() => void> | undefined = undefined

  constructor (id: string, socket: WebSocket, metadata: Readonly<Record<string, unknown>>, remoteAddress: string | undefined, now: number, protocol: boolean) {
    this.id = id
    this.protocol = protocol
    this.socket = socket
    this.metadata = metadata
    this.remoteAddress = remoteAddress
    this.connectedAt = now
    this.lastActivityAt = now
  }

  /** The session this connection belongs to (what a reconnect token resumes); made on first use. */
  get sessionId (): string {
    this.session ??= randomBytes(16).toString('base64url')
    return this.session
  }

  /** Whether a session id was ever asked for (only such sessions can be resumed). */
  get hasSession (): boolean {
    return this.session !== undefined
  }

  /** A resumed connection continues the session its token named. */
  continueSession (sessionId: string): void {
    this.session = sessionId
  }

  get connectionSecret (): string {
    this.secret ??= randomBytes(16).toString('base64url')
    return this.secret
  }

  get lastRtt (): number | undefined {
    return this.heartbeat.lastRtt
  }

  get smoothedRtt (): number | undefined {
    return this.heartbeat.smoothedRtt
  }

  get groups (): ReadonlySet<string> {
    return this.groupSet ?? noGroups
  }

  addGroup (group: string): boolean {
    this.groupSet ??= new Set()
    if (this.groupSet.has(group)) return false
    this.groupSet.add(group)
    return true
  }

  removeGroup (group: string): boolean {
    return this.groupSet?.delete(group) ?? false
  }

  /**
   * Starts a close handshake with `code` and `reason`. When `terminateAfter` is a number, the
   * socket is destroyed if the peer has not completed the handshake by then.
   * @returns false when the connection was already closing or closed.
   */
  close (code: number, reason: string, cause: DisconnectCause, terminateAfter: number | null): boolean {
    if (this.state !== 'open') return false
    // First, so that an invalid code or reason (ws throws) leaves the connection untouched.
    this.socket.close(code, reason)
    this.markClosing(cause, code)
    if (terminateAfter !== null) {
      this.closeTimer = setTimeout(() => this.terminate(), terminateAfter)
      this.closeTimer.unref()
    }
    return true
  }

  /** Records a close that `ws` started by itself (after a protocol error). */
  markClosing (cause: DisconnectCause, code: number): void {
    this.state = 'closing'
    this.closeCause = cause
    this.sentCloseCode = code
  }

  /** Destroys the socket now, without a close handshake. Its 'close' event follows. */
  terminate (cause?: DisconnectCause): void {
    if (this.state === 'closed') return
    if (this.state === 'open') {
      this.state = 'closing'
      this.closeCause = cause
    }
    this.terminated = true
    this.socket.terminate()
  }

  /** Called once, from the socket's 'close' event. */
  markClosed (): void {
    this.state = 'closed'
    if (this.closeTimer !== undefined) clearTimeout(this.closeTimer)
    this.closeTimer = undefined
    this.groupSet = undefined
    this.userData = undefined
    this.userDataBytes = 0
    const waiters = this.closedWaiters
    this.closedWaiters = undefined
    if (waiters !== undefined) for (const resolve of waiters) resolve()
  }

  /** Resolves once the socket has closed. */
  whenClosed (): Promise<void> {
    if (this.state === 'closed') return Promise.resolve()
    return new Promise((resolve) => {
      this.closedWaiters ??= []
      this.closedWaiters.push(resolve)
    })
  }
}
