import { randomInt, timingSafeEqual } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { WebSocket } from 'ws'
import { CloseCode } from './close-codes.js'
import { Connection, type DisconnectCause, type StabilizedConnection } from './connection.js'
import {
  BroadcastFailedError,
  ConnectionLimitExceededError,
  ConnectionNotFoundError,
  InvalidClientIdError,
  InvalidTokenError,
  MemoryLimitExceededError,
  ShutdownError,
  WebSocketStabilizerError
} from './errors.js'
import { fanOut, Outbound, transportDestroyed, writeTo, type BroadcastResult, type OutboundGate } from './fanout.js'
import { sendEmptyPing, takePongs } from './wire.js'
import { HeartbeatScheduler, type HeartbeatCounters } from './heartbeat.js'
import { encodeMessage, type OutboundMessage } from './message.js'
import type { ResolvedOptions } from './options.js'
import { Registry } from './registry.js'
import { drain, type LifecycleState, type ShutdownReport } from './shutdown.js'
import { pickVictims } from './memory.js'
import { InboundBudget, inboundSize } from './rate-limit.js'
import { KeyedRateLimiter, PerIpAdmission } from './admission.js'
import { MemoryAdapter, type StabilizerAdapter } from './adapter.js'
import { TokenSigner, type TokenClaims } from './tokens.js'
import { SessionStore, allowsResume } from './sessions.js'
import { paced } from './paced.js'
import { Counters, mapToRecord, type RejectionReason } from './stats.js'
import { ReplayLog } from './replay.js'
import { messageFrame, parseClientFrame, pingFrame, subprotocol, type ResumeReport, type Welcome } from './protocol.js'
import type { ReplayPlan } from './replay.js'
import type { StabilizerMetrics } from './metrics.js'
import type { ResumeInfo } from './options.js'

/** What an upgrade that presented a reconnect token asks to resume. */
export interface ResumeRequest {
  readonly sessionId: string
  /** The last sequence number the client received (`stabilizer.v1` clients), if it said. */
  readonly lastSeq: number | undefined
}
export interface BroadcastOptions {
  /** Client id(s) that must not receive the message. */
  exclude?: string | readonly string[]
  /** Send only to members of this group. */
  group?: string
}

export interface MemoryUsage {
  /** Open connections. */
  connections: number
  /** Bytes of user data held (serialized size, see `setUserData`). */
  userDataBytes: number
  /** Bytes queued for sending on all sockets (`ws` bufferedAmount). */
  bufferedBytes: number
  /** Bytes of user data held in retained sessions, waiting for their clients to resume. */
  retainedSessionBytes: number
  /** Sessions retained. */
  retainedSessions: number
  /** (userDataBytes + bufferedBytes) / connections, 0 with no connection. */
  averageBytesPerConnection: number
}

export interface RttPercentiles {
  /** Connections with a measured RTT. */
  samples: number
  p50: number | null
  p90: number | null
  p99: number | null
}

export interface HeartbeatStats extends HeartbeatCounters {
  type: 'ping' | 'custom'
  intervalMs: number
  timeoutMs: number
  /** Percentiles of the connections' smoothed RTT, in ms (null without a sample). */
  rttMs: RttPercentiles
}

export interface ProtectionStats {
  /** Connections closed (4001) to bring user data back under `maxTotalMemory`. */
  memoryEvictions: number
  /** Messages not sent because the recipient's outbound buffer was full. */
  slowConsumerDrops: number
  /** Connections closed (4002) for a full outbound buffer. */
  slowConsumerDisconnects: number
  /** Inbound messages over the rate limit, never delivered to a handler. */
  inboundDropped: number
  /** Connections closed (1008) for sending too fast. */
  rateLimitCloses: number
}

export interface StabilizerStats {
  status: LifecycleState
  uptimeMs: number
  activeConnections: number
  totalConnections: number
  totalDisconnections: number
  closedByCode: Record<string, number>
  closedByCause: Record<string, number>
  rejectedUpgrades: Record<RejectionReason, number>
  groups: number
  memory: MemoryUsage
  protection: ProtectionStats
  heartbeat: HeartbeatStats
  clientIds?: string[]
}

const kConnection = Symbol('fastify-websocket-stabilizer.connection')
type TrackedSocket = WebSocket & { [kConnection]?: Connection }

/** Longest client id accepted, in UTF-16 code units. */
export const maxClientIdLength = 256

/**
 * `app.stabilizer`: the public API. It owns the registry of connections, their lifecycle,
 * fan-out and shutdown. The plugin entry wires it to Fastify.
 */
export class Stabilizer {
  private readonly registry = new Registry()
  /** @internal Per-IP caps and connect rates (used by the upgrade admission). */
  readonly perIp: PerIpAdmission
  /** @internal Whether reconnect tokens are signed with a random per-process key (none configured). */
  readonly ephemeralSecret: boolean
  private readonly tokens: TokenSigner
  private readonly adapter: StabilizerAdapter
  private readonly sessions: SessionStore
  /** Reconnect-token requests per client id, over REST and in-band. */
  private readonly tokenRequests: KeyedRateLimiter
  private readonly counters = new Counters()
  private lifecycle: LifecycleState = 'running'
  private shutdownRun: Promise<ShutdownReport> | undefined
  private userDataTotal = 0
  private readonly options: ResolvedOptions
  private readonly log: FastifyBaseLogger
  // One set of socket listeners shared by every connection (no closure per socket).
  private readonly onSocketClose: (this: TrackedSocket, code: number, reason: Buffer) => void
  private readonly onSocketError: (this: TrackedSocket, err: Error) => void
  private readonly onSocketMessage: (this: TrackedSocket, data: unknown) => void
  private readonly onSocketPong: (this: TrackedSocket) => void
  private readonly onSocketPing: (this: TrackedSocket) => void
  /** Takes custom pongs and over-the-rate messages out before any 'message' listener; undefined when neither applies. */
  private readonly interceptMessages: ((this: TrackedSocket, event: string | symbol, ...args: unknown[]) => boolean) | undefined
  /** The emit of `stabilizer.v1` sockets: control frames are handled here, app messages are unwrapped. */
  private readonly interceptProtocol: (this: TrackedSocket, event: string | symbol, ...args: unknown[]) => boolean
  private readonly rateLimited: boolean
  /** Undefined when `heartbeatInterval` is 0. */
  private readonly heartbeat: HeartbeatScheduler | undefined
  /** The slow-consumer check every outbound message passes. */
  private readonly outboundGate: OutboundGate
  /** @internal Per-event Prometheus metrics; undefined when `metrics` is off. */
  metrics: StabilizerMetrics | undefined = undefined

  constructor (options: ResolvedOptions, log: FastifyBaseLogger) {
    this.options = options
    this.log = log
    this.perIp = new PerIpAdmission(options.maxConnectionsPerIp, options.connectRatePerIp)
    this.ephemeralSecret = options.secrets === undefined
    this.tokens = new TokenSigner(options.secrets ?? [TokenSigner.randomSecret()])
    this.adapter = new MemoryAdapter()
    this.sessions = new SessionStore(options.resumeWindow, options.maxRetainedSessions)
    this.tokenRequests = new KeyedRateLimiter(options.tokenRequestsPerMinute, 60)
    const self = this
    const { heartbeatInterval, heartbeatTimeout, anyMessageIsAlive, isCustomPong, inboundMessageRate, inboundByteRate } = options
    this.rateLimited = inboundMessageRate > 0 || inboundByteRate > 0
    this.heartbeat = heartbeatInterval === 0
      ? undefined
      : new HeartbeatScheduler({ interval: heartbeatInterval, timeout: heartbeatTimeout }, {
        sendPing: (connection) => this.sendHeartbeat(connection),
        terminate: (connection) => {
          this.log.debug({ clientId: connection.id, lastRtt: connection.lastRtt, timeoutMs: heartbeatTimeout }, 'websocket heartbeat timeout')
          this.terminateConnection(connection, 'heartbeat_timeout')
        },
        measured: (rttMs) => this.metrics?.rtt(rttMs)
      })
    const heartbeat = this.heartbeat
    this.outboundGate = this.createOutboundGate()
    this.onSocketClose = function (code, reason) {
      const connection = this[kConnection]
      if (connection !== undefined) self.closed(connection, code, reason)
    }
    this.onSocketError = function (err) {
      // ws closes the socket after an error; an unclean peer is expected, not a server fault.
      const connection = this[kConnection]
      self.log.debug({ err, clientId: connection?.id }, 'websocket error')
      const protocolClose = protocolErrorCloseCode(err)
      if (connection !== undefined && connection.state === 'open' && protocolClose !== undefined) {
        connection.markClosing(protocolClose === CloseCode.MESSAGE_TOO_BIG ? 'message_too_big' : 'protocol_error', protocolClose)
        self.registry.deactivate(connection)
      }
    }
    this.onSocketMessage = function (data) {
      const connection = this[kConnection]
      if (connection === undefined) return
      self.metrics?.received(data)
      connection.lastActivityAt = Date.now()
      if (anyMessageIsAlive && heartbeat !== undefined) heartbeat.alive(connection, false)
    }
    this.onSocketPong = function () {
      const connection = this[kConnection]
      if (connection !== undefined && heartbeat !== undefined) heartbeat.alive(connection, true)
    }
    this.onSocketPing = function () {
      const connection = this[kConnection]
      if (connection !== undefined && heartbeat !== undefined) heartbeat.alive(connection, false)
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
            if (connection.inbound !== undefined && !self.admitInbound(connection, inboundSize(args[0]))) return true
          }
        }
        return emit.call(this, event, ...args)
      }
    this.interceptProtocol = function (event, ...args) {
      if (event !== 'message') return emit.call(this, event, ...args)
      const connection = this[kConnection]
      if (connection === undefined) return emit.call(this, event, ...args)
      if (connection.inbound !== undefined && !self.admitInbound(connection, inboundSize(args[0]))) return true
      if (args[1] === true) return emit.call(this, event, ...args) // binary: the app's bytes as they are
      const frame = parseClientFrame(messageText(args[0]))
      if (frame?.t === 'm') return emit.call(this, event, Buffer.from(frame.d), false)
      connection.lastActivityAt = Date.now()
      self.protocolControl(connection, frame)
      return true
    }
  }

  /** A control frame of a `stabilizer.v1` client (undefined: malformed, closed with 1002). */
  private protocolControl (connection: Connection, frame: ReturnType<typeof parseClientFrame>): void {
    switch (frame?.t) {
      case 'pong':
        this.heartbeat?.alive(connection, true)
        return
      case 'ack':
        connection.replay?.acknowledge(frame.s)
        this.heartbeat?.alive(connection, false)
        return
      case 'token':
        this.sendTokenInBand(connection)
        return
      case 'unknown':
        return // a newer client's frame: ignored
      default:
        this.log.debug({ clientId: connection.id }, 'websocket protocol error: malformed stabilizer.v1 frame')
        this.closeConnection(connection, CloseCode.PROTOCOL_ERROR, 'malformed stabilizer.v1 frame', 'protocol_error')
    }
  }

  private sendTokenInBand (connection: Connection): void {
    let reply: string
    const wait = this.options.enableReconnect ? this.takeTokenRequest(connection.id) : -1
    if (wait === 0) {
      const { token, expiresAt } = this.issueToken(connection.id)
      reply = JSON.stringify({ t: 'token', token, expiresAt })
    } else {
      reply = JSON.stringify({ t: 'token', token: null, retryAfter: wait < 0 ? null : wait })
    }
    connection.socket.send(reply)
  }

  /** 'running', then 'draining' once a shutdown began, then 'closed'. */
  get state (): LifecycleState {
    return this.lifecycle
  }

  /**
   * Registers a socket by hand (for routes opted out with `config: { stabilizer: false }` or
   * sockets from elsewhere). A connection with the same id is replaced (closed with 4500).
   * @throws ConnectionLimitExceededError at `maxConnections` (the socket is closed with 1013).
   * @throws ShutdownError once a shutdown began (the socket is closed with the shutdown code).
   */
  connect (clientId: string, socket: WebSocket, metadata: Record<string, unknown> = {}): StabilizedConnection {
    checkClientId(clientId)
    if (socket.readyState !== WebSocket.OPEN) throw new TypeError('connect() needs an open WebSocket')
    if ((socket as TrackedSocket)[kConnection] !== undefined) throw new TypeError('This socket is already registered')
    if (this.lifecycle !== 'running') {
      this.counters.rejected.shuttingDown++
      socket.close(this.options.shutdownCloseCode, 'server shutting down')
      throw new ShutdownError()
    }
    if (!this.hasRoomFor(clientId)) {
      this.counters.rejected.connectionLimit++
      socket.close(CloseCode.TRY_AGAIN_LATER, 'connection limit reached')
      throw new ConnectionLimitExceededError(this.options.maxConnections)
    }
    return this.attach(clientId, socket, metadata, undefined)
  }

  /**
   * Closes the client's connection with `code` (default 1000) and `reason`; waits for the
   * close handshake, at most `closeTimeout` before the socket is terminated. Idempotent.
   * @returns true if this call closed a connection, false if there was none.
   */
  async disconnect (clientId: string, code: number = CloseCode.NORMAL, reason = ''): Promise<boolean> {
    const connection = this.registry.get(clientId)
    if (connection === undefined) return false
    this.closeConnection(connection, code, reason, 'server_disconnect')
    await connection.whenClosed()
    return true
  }

  /**
   * Sends one message (string → text, bytes → binary, anything else → JSON text).
   * Resolves true once `ws` has written it to the socket, false if the client is gone or the
   * socket failed before writing it. Never rejects for a gone client.
   * @throws TypeError (as a rejection) when the message cannot be serialized.
   */
  async sendToClient (clientId: string, message: OutboundMessage): Promise<boolean> {
    const connection = this.registry.get(clientId)
    const outbound = new Outbound(encodeMessage(message))
    if (connection === undefined) {
      // A `stabilizer.v1` client gets it on resume: logged into its closing connection's log
      // (which its retained session will keep), or into its retained session's.
      const closing = this.registry.closing(clientId)
      if (closing !== undefined) this.logMissed(closing, outbound)
      else if (this.sessions.replaySessions > 0) this.sessions.queue(clientId, outbound.protocolPayload, outbound.encoded.binary)
      return false
    }
    if (!this.outboundGate(connection, outbound.sizeFor(connection))) return false
    return await new Promise<boolean>((resolve) => {
      const written = (err?: Error): void => resolve(err == null && !transportDestroyed(connection.socket))
      if (!writeTo(connection, outbound.frameFor(connection), written)) resolve(false)
      else this.metrics?.sent(1, outbound.sizeFor(connection))
    })
  }

  /**
   * Sends one message to every open connection (or a group's members), serialized once,
   * never waiting on a slow socket, yielding every `maxConcurrentBroadcast` sends.
   * @throws BroadcastFailedError (as a rejection) when the message cannot be serialized.
   */
  async broadcast (message: OutboundMessage, options: BroadcastOptions = {}): Promise<BroadcastResult> {
    const startedAt = performance.now()
    let encoded
    try {
      encoded = encodeMessage(message, true)
    } catch (err) {
      throw new BroadcastFailedError((err as Error).message, { cause: err })
    }
    const { exclude, group } = options
    const excluded = exclude === undefined ? undefined : new Set(typeof exclude === 'string' ? [exclude] : exclude)
    const outbound = new Outbound(encoded)
    // Retained sessions first: a client resuming during the fan-out has its log moved to its new connection.
    const queued = this.sessions.replaySessions === 0 ? 0 : this.sessions.queueBroadcast({ group, exclude: excluded }, outbound.protocolPayload, encoded.binary)
    const recipients = group === undefined ? this.registry.connections() : this.registry.members(group)
    const result = recipients === undefined
      ? { total: 0, sent: 0, failed: 0, skipped: 0, dropped: 0, queued: 0 }
      : await fanOut(recipients, outbound, excluded, this.options.maxConcurrentBroadcast, this.outboundGate, this.logMissed)
    result.queued = queued
    this.metrics?.broadcast(group !== undefined, startedAt, result, encoded)
    return result
  }

  /** Adds the client to `group`. @returns false if the client is not connected or already a member. */
  join (clientId: string, group: string): boolean {
    const connection = this.registry.get(clientId)
    return connection !== undefined && this.registry.join(connection, group)
  }

  /** Removes the client from `group`. @returns false if it was not a member. */
  leave (clientId: string, group: string): boolean {
    const connection = this.registry.get(clientId)
    return connection !== undefined && this.registry.leave(connection, group)
  }

  /** Groups of a connected client (empty for an unknown client). */
  getGroups (clientId: string): string[] {
    return [...(this.registry.get(clientId)?.groups ?? [])]
  }

  /** Client ids of the open connections. */
  getActiveConnections (): string[] {
    return [...this.registry.ids()]
  }

  getConnectionCount (): number {
    return this.registry.size
  }

  getConnection (clientId: string): StabilizedConnection | undefined {
    return this.registry.get(clientId)
  }

  /**
   * A signed, single-use token with which the client can come back as itself
   * (`reconnectTokenTtl`). It names the client's current session.
   * @throws ConnectionNotFoundError when the client is not connected.
   */
  generateReconnectToken (clientId: string): string {
    return this.issueToken(clientId).token
  }

  /** @internal The token and its expiry (ms since the epoch). */
  issueToken (clientId: string): { token: string, expiresAt: number } {
    this.assertReconnectEnabled()
    const connection = this.registry.get(clientId)
    if (connection === undefined) throw new ConnectionNotFoundError(clientId)
    const { token, claims } = this.tokens.sign(clientId, connection.sessionId, this.options.reconnectTokenTtl)
    return { token, expiresAt: claims.exp }
  }

  /** @internal Takes one reconnect-token request of the client's budget: 0, or the seconds to wait. */
  takeTokenRequest (clientId: string): number {
    return this.tokenRequests.take(clientId, performance.now())
  }

  /** @internal Verifies a token without redeeming it (throws the two token errors). */
  verifyToken (token: string): TokenClaims {
    return this.tokens.verify(token)
  }

  /** @internal Redeems a verified token: false if it was already used. */
  async redeemToken (claims: TokenClaims): Promise<boolean> {
    return await this.adapter.redeemToken(claims.jti, claims.exp)
  }

  /** @internal Whether `secret` is the connection secret of the client's open connection (constant time). */
  holdsConnection (clientId: string, secret: string): boolean {
    const expected = this.registry.get(clientId)?.connectionSecret
    if (expected === undefined) return false
    const given = Buffer.from(secret)
    const wanted = Buffer.from(expected)
    return given.length === wanted.length && timingSafeEqual(given, wanted)
  }

  /**
   * Verifies and redeems a reconnect token (a token is valid once), resolving with its client
   * id. Shares redemptions with every instance through the adapter.
   * @throws InvalidTokenError malformed, tampered, signed by an unknown key, not yet valid or already used.
   * @throws TokenExpiredError expired.
   */
  async validateReconnectToken (token: string): Promise<string> {
    this.assertReconnectEnabled()
    const claims = this.tokens.verify(token)
    if (!await this.redeemToken(claims)) throw new InvalidTokenError('already used')
    return claims.cid
  }

  /**
   * Records a heartbeat answer for a client, for apps that route messages themselves (with
   * `heartbeatType: 'custom'` the stabilizer already does it for every stabilized socket).
   * @returns false when the client is not connected.
   */
  handlePong (clientId: string): boolean {
    const connection = this.registry.get(clientId)
    if (connection === undefined) return false
    connection.lastActivityAt = Date.now()
    this.heartbeat?.alive(connection, true)
    return true
  }

  /**
   * Stores `value` under `key` for a connected client; `undefined` deletes the key. The size
   * counted is the UTF-8 length of the key plus that of `JSON.stringify(value)`.
   *
   * Budgets: a write that would take the client past `maxMemoryPerConnection` throws and
   * changes nothing. A write that would take everyone past `maxTotalMemory` evicts other
   * connections by `memoryEvictionPolicy` (closed with 4001), just enough to fit; one that
   * could not fit even alone throws and evicts nobody.
   * @throws ConnectionNotFoundError when the client is not connected.
   * @throws MemoryLimitExceededError when the write cannot fit (nothing is changed).
   * @throws TypeError when the value cannot be serialized as JSON.
   */
  setUserData (clientId: string, key: string, value: unknown): void {
    const connection = this.registry.get(clientId)
    if (connection === undefined) throw new ConnectionNotFoundError(clientId)
    const previous = connection.userData?.get(key)
    if (value === undefined) {
      if (previous === undefined) return
      connection.userData?.delete(key)
      this.adjustUserData(connection, -previous.size)
      return
    }
    const json = JSON.stringify(value)
    if (json === undefined) throw new TypeError(`Cannot store a value of type ${typeof value}`)
    const size = Buffer.byteLength(key) + Buffer.byteLength(json)
    const delta = size - (previous?.size ?? 0)
    const held = connection.userDataBytes + delta
    const { maxMemoryPerConnection, maxTotalMemory } = this.options
    if (maxMemoryPerConnection > 0 && held > maxMemoryPerConnection) {
      throw new MemoryLimitExceededError(`client "${clientId}" would hold ${held} bytes of user data; maxMemoryPerConnection is ${maxMemoryPerConnection}`)
    }
    if (maxTotalMemory > 0 && this.userDataTotal + delta > maxTotalMemory) {
      if (held > maxTotalMemory) {
        throw new MemoryLimitExceededError(`client "${clientId}" would hold ${held} bytes of user data, more than maxTotalMemory (${maxTotalMemory}) on its own`)
      }
      this.evict(pickVictims(this.registry.connections(), this.userDataTotal + delta - maxTotalMemory, this.options.memoryEvictionPolicy, connection))
    }
    connection.userData ??= new Map()
    connection.userData.set(key, { value, size })
    this.adjustUserData(connection, delta)
  }

  /** The value stored under `key`, or undefined (also for an unknown client). */
  getUserData (clientId: string, key: string): unknown {
    return this.registry.get(clientId)?.userData?.get(key)?.value
  }

  getMemoryUsage (): MemoryUsage {
    let bufferedBytes = 0
    for (const connection of this.registry.live) bufferedBytes += connection.socket.bufferedAmount
    const connections = this.registry.size
    const held = this.userDataTotal + bufferedBytes
    return {
      connections,
      userDataBytes: this.userDataTotal,
      bufferedBytes,
      retainedSessionBytes: this.sessions.bytes,
      retainedSessions: this.sessions.size,
      averageBytesPerConnection: connections === 0 ? 0 : Math.round(held / connections)
    }
  }

  /** What `GET /ws-stats` returns. */
  getStats (): StabilizerStats {
    const stats: StabilizerStats = {
      status: this.lifecycle,
      uptimeMs: Date.now() - this.counters.startedAt,
      activeConnections: this.registry.size,
      totalConnections: this.counters.opened,
      totalDisconnections: this.counters.closed,
      closedByCode: mapToRecord(this.counters.closedByCode),
      closedByCause: mapToRecord(this.counters.closedByCause),
      rejectedUpgrades: { ...this.counters.rejected },
      groups: this.registry.groupCount,
      memory: this.getMemoryUsage(),
      protection: { ...this.counters.protection },
      heartbeat: {
        type: this.options.heartbeatType,
        intervalMs: this.options.heartbeatInterval,
        timeoutMs: this.options.heartbeatTimeout,
        ...(this.heartbeat?.counters ?? { pingsSent: 0, pongsReceived: 0, timeouts: 0, reprieves: 0, longestTickMs: 0 }),
        rttMs: this.rttPercentiles()
      }
    }
    if (this.options.statsIncludeClientIds) stats.clientIds = this.getActiveConnections()
    return stats
  }

  /**
   * Stops accepting upgrades (503), closes every socket with `shutdownCloseCode` and a reason
   * carrying a per-client `retry-after-ms` hint, waits for the handshakes until `timeoutMs`
   * (default `shutdownTimeout`), then terminates the rest. Calling it again returns the same
   * report. `app.close()` calls it.
   */
  async gracefulShutdown (timeoutMs: number = this.options.shutdownTimeout): Promise<ShutdownReport> {
    if (this.shutdownRun !== undefined) return await this.shutdownRun
    if (!Number.isFinite(timeoutMs) || timeoutMs < 0) throw new RangeError('timeoutMs must be a finite number ≥ 0')
    this.lifecycle = 'draining'
    this.heartbeat?.stop()
    // Nothing outlives the process that another instance could not see (the Redis adapter will hold sessions).
    this.sessions.clear()
    const { shutdownCloseCode, shutdownRetryDelay, shutdownRetrySpread } = this.options
    const label = shutdownCloseCode === CloseCode.SERVICE_RESTART ? 'service restart' : 'going away'
    this.shutdownRun = drain({
      connections: [...this.registry.live],
      deadlineMs: timeoutMs,
      closesPerTurn: this.options.maxConcurrentCleanup,
      close: (connection) => this.closeConnection(connection, shutdownCloseCode, `${label}; retry-after-ms=${shutdownRetryDelay + randomInt(shutdownRetrySpread + 1)}`, 'shutdown', null),
      terminate: (connection) => this.terminateConnection(connection, 'shutdown')
    }).then((report) => {
      this.lifecycle = 'closed'
      this.metrics?.shutdownFinished(report.durationMs)
      this.log.info({ report }, 'websocket shutdown complete')
      return report
    })
    return await this.shutdownRun
  }

  // ---- used by the plugin's upgrade integration --------------------------------------------

  /** @internal Whether one more connection for `clientId` fits (a replacement always fits). */
  hasRoomFor (clientId: string): boolean {
    return this.registry.has(clientId) || this.registry.size + this.registry.reserved < this.options.maxConnections
  }

  /** @internal Whether `clientId` has an open connection (an upgrade for it is a replacement). */
  isConnected (clientId: string): boolean {
    return this.registry.has(clientId)
  }

  /** @internal Holds a slot for an admitted upgrade until it connects or fails. */
  reserveSlot (): void {
    this.registry.reserved++
  }

  /** @internal */
  releaseSlot (): void {
    this.registry.reserved--
  }

  /** @internal */
  countRejection (reason: RejectionReason): void {
    this.counters.rejected[reason]++
  }

  /** @internal Registers an admitted socket (no limit check: its slot was reserved). */
  attach (clientId: string, socket: WebSocket, metadata: Readonly<Record<string, unknown>>, remoteAddress: string | undefined, resumeRequest?: ResumeRequest): Connection {
    const connection = new Connection(clientId, socket, metadata, remoteAddress, Date.now())
    if (socket.protocol === subprotocol) connection.replay = this.newReplayLog()
    const tracked = socket as TrackedSocket
    tracked[kConnection] = connection
    tracked.on('close', this.onSocketClose)
    tracked.on('error', this.onSocketError)
    tracked.on('message', this.onSocketMessage)
    if (this.heartbeat !== undefined) {
      if (this.options.heartbeatType === 'ping') {
        tracked.on('pong', this.onSocketPong)
        takePongs(tracked, this.onSocketPong)
      }
      if (this.options.anyMessageIsAlive) tracked.on('ping', this.onSocketPing)
    }
    if (this.rateLimited) connection.inbound = new InboundBudget(this.options.inboundMessageRate, this.options.inboundByteRate, performance.now())
    if (connection.protocol) tracked.emit = this.interceptProtocol
    else if (this.interceptMessages !== undefined) tracked.emit = this.interceptMessages
    this.counters.opened++
    const replaced = this.registry.add(connection)
    if (replaced !== undefined) {
      replaced.close(CloseCode.REPLACED, 'replaced by a newer connection', 'replaced', this.options.closeTimeout)
    }
    this.log.debug({ clientId, replaced: replaced !== undefined }, 'websocket connected')
    this.heartbeat?.add(connection)
    const resumed = resumeRequest === undefined ? undefined : this.resume(connection, resumeRequest, replaced)
    this.metrics?.resumed(resumed)
    if (connection.protocol) this.welcome(connection, resumed)
    if (this.lifecycle !== 'running') {
      // A shutdown began while this upgrade was in flight: it would never be drained.
      this.closeConnection(connection, this.options.shutdownCloseCode, 'server shutting down', 'shutdown')
    } else {
      if (this.options.onConnect !== undefined) this.runHook('onConnect', () => this.options.onConnect?.(connection))
      if (resumed !== undefined && this.options.onResume !== undefined) {
        const info: ResumeInfo = { sessionId: resumed.sessionId, stateRestored: resumed.stateRestored, replay: resumed.outcome, replayed: resumed.replayed, missed: resumed.missed }
        this.runHook('onResume', () => this.options.onResume?.(connection, info))
      }
    }
    return connection
  }

  /**
   * @internal Starts a server-initiated close. The socket is terminated if the peer has not
   * answered within `terminateAfter` (default `closeTimeout`; null for a shutdown, whose
   * deadline governs).
   */
  closeConnection (connection: Connection, code: number, reason: string, cause: DisconnectCause, terminateAfter: number | null = this.options.closeTimeout): boolean {
    if (!connection.close(code, reason, cause, terminateAfter)) return false
    this.registry.deactivate(connection)
    return true
  }

  /** @internal */
  terminateConnection (connection: Connection, cause: DisconnectCause): void {
    connection.terminate(cause)
    this.registry.deactivate(connection)
  }

  /** @internal Last resort at onClose: nothing of the plugin may outlive the app. */
  destroyAll (): void {
    this.heartbeat?.stop()
    this.sessions.clear()
    for (const connection of this.registry.live) this.terminateConnection(connection, 'shutdown')
    this.lifecycle = 'closed'
  }

  // ---- internals ---------------------------------------------------------------------------

  private closed (connection: Connection, code: number, reasonBuffer: Buffer): void {
    if (connection.state === 'closed') return
    // When the server sent a close frame that the peer never answered, the session ended
    // with the server's code, not with "abnormal".
    if (code === CloseCode.ABNORMAL && connection.sentCloseCode !== undefined && !connection.terminated) code = connection.sentCloseCode
    const cause = connection.closeCause ?? (code === CloseCode.ABNORMAL ? 'connection_lost' : 'client_closed')
    connection.closeCause = cause
    this.registry.remove(connection)
    // Retained before markClosed() frees the connection's user data and groups.
    if (connection.hasSession && this.options.enableReconnect && this.lifecycle === 'running' && allowsResume(cause, code)) {
      this.sessions.retain(connection)
    }
    if (connection.countedIp !== undefined) this.perIp.release(connection.countedIp)
    connection.countedIp = undefined
    this.heartbeat?.remove(connection)
    this.userDataTotal -= connection.userDataBytes
    connection.markClosed()
    this.counters.recordClose(code, cause)
    this.metrics?.connectionClosed(connection.connectedAt)
    // A socket that ended without a close frame has no reason of its own: report the cause.
    const reason = reasonBuffer.length > 0 ? reasonBuffer.toString() : code === CloseCode.ABNORMAL ? cause : ''
    this.log.debug({ clientId: connection.id, code, cause, durationMs: Date.now() - connection.connectedAt }, 'websocket disconnected')
    const { onDisconnect } = this.options
    if (onDisconnect !== undefined) this.runHook('onDisconnect', () => onDisconnect(connection, code, reason))
  }

  /**
   * A connection may queue a message while its outbound buffer stays within
   * `maxBufferedAmount` (a message is always allowed onto an empty buffer, so one larger than
   * the cap still reaches a reader that keeps up). Past it: 'drop' counts and skips the
   * message, 'disconnect' closes with 4002. The buffer is ws's `bufferedAmount`.
   */
  private createOutboundGate (): OutboundGate {
    const { maxBufferedAmount, slowConsumerPolicy } = this.options
    if (maxBufferedAmount === 0) return () => true
    const protection = this.counters.protection
    return (connection, bytes) => {
      const buffered = connection.socket.bufferedAmount
      if (buffered === 0 || buffered + bytes <= maxBufferedAmount) return true
      protection.slowConsumerDrops++
      connection.droppedMessages++
      if (slowConsumerPolicy === 'disconnect' && this.closeConnection(connection, CloseCode.SLOW_CONSUMER, 'slow consumer', 'slow_consumer')) {
        protection.slowConsumerDisconnects++
        this.log.debug({ clientId: connection.id, bufferedBytes: buffered }, 'websocket slow consumer disconnected')
      }
      return false
    }
  }

  /**
   * Takes one inbound message from the connection's budget. Over it: the message is dropped
   * (never delivered) and, with `rateLimitPolicy: 'close'`, the connection is closed with 1008.
   * A connection already closing drops whatever still arrives.
   */
  private admitInbound (connection: Connection, size: number): boolean {
    if (connection.state === 'open' && connection.inbound!.take(size, performance.now())) return true
    this.counters.protection.inboundDropped++
    if (this.options.rateLimitPolicy === 'close' && this.closeConnection(connection, CloseCode.POLICY_VIOLATION, 'rate limit exceeded', 'rate_limited')) {
      this.counters.protection.rateLimitCloses++
      this.log.debug({ clientId: connection.id }, 'websocket closed for its inbound rate')
    }
    return false
  }

  private sendHeartbeat (connection: Connection): boolean {
    if (connection.state !== 'open' || connection.socket.readyState !== WebSocket.OPEN) return false
    try {
      if (connection.protocol) connection.socket.send(pingFrame(Date.now()))
      else if (this.options.heartbeatType === 'ping') sendEmptyPing(connection.socket)
      else connection.socket.send(this.options.customPing(Date.now()))
      return true
    } catch (err) {
      this.log.debug({ err, clientId: connection.id }, 'websocket heartbeat not sent')
      return false
    }
  }

  private rttPercentiles (): RttPercentiles {
    const values: number[] = []
    for (const connection of this.registry.connections()) {
      const rtt = connection.smoothedRtt
      if (rtt !== undefined) values.push(rtt)
    }
    if (values.length === 0) return { samples: 0, p50: null, p90: null, p99: null }
    const sorted = Float64Array.from(values).sort()
    const at = (q: number): number => Math.round(sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] * 100) / 100
    return { samples: sorted.length, p50: at(0.5), p90: at(0.9), p99: at(0.99) }
  }

  /**
   * Frees the victims' user data at once (the write that needed the room goes ahead) and
   * closes them with 4001, `maxConcurrentCleanup` per event-loop turn.
   */
  private evict (victims: Connection[]): void {
    for (const victim of victims) {
      this.log.debug({ clientId: victim.id, userDataBytes: victim.userDataBytes, policy: this.options.memoryEvictionPolicy }, 'websocket evicted for memory')
      this.adjustUserData(victim, -victim.userDataBytes)
      victim.userData = undefined
      this.registry.deactivate(victim)
      this.counters.protection.memoryEvictions++
    }
    paced(victims, this.options.maxConcurrentCleanup, (victim) => this.closeConnection(victim, CloseCode.MEMORY_EVICTED, 'memory limit', 'memory_eviction'))
      .catch((err: unknown) => { this.log.error({ err }, 'eviction failed') })
  }

  private assertReconnectEnabled (): void {
    if (!this.options.enableReconnect) throw new WebSocketStabilizerError('reconnect tokens are disabled (enableReconnect: false)')
  }

  /**
   * Continues session `sessionId` on a new connection: its user data and groups come from the
   * connection it replaces (a resume while the old socket is still open) or from the retained
   * sessions; when neither has it (the window passed), the identity alone is resumed.
   */
  private resume (connection: Connection, request: ResumeRequest, replaced: Connection | undefined): ResumeReport & { sessionId: string, plan: ReplayPlan | undefined } {
    const { sessionId } = request
    connection.continueSession(sessionId)
    let state: { userData: Connection['userData'], userDataBytes: number, groups: readonly string[], replay: ReplayLog | undefined } | undefined
    if (replaced !== undefined && replaced.hasSession && replaced.sessionId === sessionId) {
      state = { userData: replaced.userData, userDataBytes: replaced.userDataBytes, groups: [...replaced.groups], replay: replaced.replay }
      this.adjustUserData(replaced, -replaced.userDataBytes)
      replaced.userData = undefined
      // The log moves: nothing more may be numbered on the old socket.
      replaced.replay = undefined
    } else {
      state = this.sessions.take(connection.id, sessionId)
    }
    if (state !== undefined) {
      connection.userData = state.userData
      this.adjustUserData(connection, state.userDataBytes)
      for (const group of state.groups) this.registry.join(connection, group)
    }
    // A protocol client continues its session's numbering when the log is there; a plain one gets no replay.
    let plan: ReplayPlan | undefined
    if (connection.protocol && state?.replay !== undefined) {
      connection.replay = state.replay
      plan = state.replay.plan(request.lastSeq)
    }
    const report = { sessionId, plan, stateRestored: state !== undefined, outcome: plan?.outcome ?? 'none', replayed: plan?.messages.length ?? 0, missed: plan?.missed ?? 0 } as const
    this.log.debug({ clientId: connection.id, stateRestored: report.stateRestored, replay: report.outcome, replayed: report.replayed, missed: report.missed }, 'websocket session resumed')
    return report
  }

  /**
   * The first frame on a `stabilizer.v1` connection, followed by the replayed messages in
   * order. The replay goes out in one turn: it is bounded by `replayBufferSize`/`replayBufferBytes`.
   */
  private welcome (connection: Connection, resumed: (ResumeReport & { plan: ReplayPlan | undefined }) | undefined): void {
    const issued = this.options.enableReconnect ? this.issueToken(connection.id) : undefined
    const plan = resumed?.plan
    const welcome: Welcome = {
      t: 'welcome',
      v: 1,
      clientId: connection.id,
      sessionId: connection.sessionId,
      secret: connection.connectionSecret,
      token: issued?.token ?? null,
      tokenExpiresAt: issued?.expiresAt ?? null,
      heartbeat: { interval: this.options.heartbeatInterval, timeout: this.options.heartbeatTimeout },
      seq: plan?.from ?? connection.replay!.lastSeq,
      resume: resumed === undefined ? null : { outcome: resumed.outcome, stateRestored: resumed.stateRestored, replayed: resumed.replayed, missed: resumed.missed }
    }
    const { socket } = connection
    socket.send(JSON.stringify(welcome))
    if (plan !== undefined) {
      for (const message of plan.messages) socket.send(messageFrame(message.seq, message.payload, message.binary), { binary: message.binary })
    }
  }

  private newReplayLog (): ReplayLog {
    return this.options.enableReconnect ? new ReplayLog(this.options.replayBufferSize, this.options.replayBufferBytes) : new ReplayLog(0, 0)
  }

  /**
   * A `stabilizer.v1` recipient that was closing or closed when a broadcast reached it: the
   * message is numbered into its log without being sent, so a resume replays it. A closing
   * socket will send nothing more, so the client sees no gap; a closed one is logged only while
   * its session is retained (afterwards the log belongs to its next connection).
   */
  private readonly logMissed = (connection: Connection, message: Outbound): void => {
    if (connection.replay === undefined) return
    if (connection.state === 'closing' && connection.closeCause !== 'replaced') {
      connection.replay.append(message.protocolPayload, message.encoded.binary)
    } else if (connection.state === 'closed') {
      this.sessions.queueTo(connection.id, connection.replay, message.protocolPayload, message.encoded.binary)
    }
  }

  private adjustUserData (connection: Connection, delta: number): void {
    connection.userDataBytes += delta
    this.userDataTotal += delta
  }

  private runHook (name: string, call: () => unknown): void {
    const fail = (err: unknown): void => { this.log.error({ err, hook: name }, `${name} hook failed`) }
    try {
      const result = call()
      if (result instanceof Promise) result.catch(fail)
    } catch (err) {
      fail(err)
    }
  }
}

/** Close codes `ws` sends after the protocol errors it raises (its own mapping is not exported). */
const wsErrorCloseCodes: Record<string, number> = {
  WS_ERR_UNSUPPORTED_MESSAGE_LENGTH: CloseCode.MESSAGE_TOO_BIG,
  WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH: CloseCode.MESSAGE_TOO_BIG,
  WS_ERR_INVALID_UTF8: 1007,
  WS_ERR_TOO_MANY_BUFFERED_PARTS: 1008
}

function protocolErrorCloseCode (err: Error & { code?: string }): number | undefined {
  if (typeof err.code !== 'string' || !err.code.startsWith('WS_ERR_')) return undefined
  return wsErrorCloseCodes[err.code] ?? 1002
}

/** The text of an inbound text message as `ws` delivers it (a Buffer unless the app changed binaryType). */
function messageText (data: unknown): string {
  if (Buffer.isBuffer(data)) return data.toString()
  if (Array.isArray(data)) return Buffer.concat(data as Buffer[]).toString()
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString()
  return String(data)
}

/** @throws InvalidClientIdError unless `clientId` is a non-empty string of at most 256 characters. */
export function checkClientId (clientId: unknown): asserts clientId is string {
  if (typeof clientId !== 'string' || clientId.length === 0 || clientId.length > maxClientIdLength) {
    throw new InvalidClientIdError(`expected a non-empty string of at most ${maxClientIdLength} characters`)
  }
}
