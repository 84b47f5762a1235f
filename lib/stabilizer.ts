/**
 * `app.stabilizer`, the public API: connections' lifecycle from attach to closed, and the
 * composition of the parts that do the work.
 */
import { randomBytes, randomInt, timingSafeEqual } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { WebSocket } from 'ws'
import { allStream, clientStream, groupStream, type StabilizerAdapter } from './adapter/adapter.js'
import { MemoryAdapter } from './adapter/memory.js'
import { AdmissionGate, type AdmissionTicket, type PerIpAdmission } from './admission.js'
import { CloseCode } from './close-codes.js'
import { Connection, type DisconnectCause, type StabilizedConnection } from './connection.js'
import {
  BroadcastFailedError, ConnectionLimitExceededError, ConnectionNotFoundError, InvalidClientIdError,
  InvalidTokenError, ShutdownError
} from './errors.js'
import { fanOut, Outbound, type BroadcastResult } from './fanout.js'
import { HeartbeatScheduler } from './heartbeat.js'
import { encodeMessage, type OutboundMessage } from './message.js'
import type { ResolvedOptions } from './options.js'
import { paced } from './paced.js'
import { followFrame, subprotocol, unfollowFrame } from './protocol.js'
import { Registry } from './registry.js'
import { StreamStarter, type ResumeRequest } from './resume.js'
import { drain, type LifecycleState, type ShutdownReport } from './shutdown.js'
import { isBound, SocketBinding } from './socket-binding.js'
import { collectStats, Counters, memoryUsage, type MemoryUsage, type RejectionReason, type StabilizerStats } from './stats.js'
import { ReconnectTokens, type TokenClaims } from './tokens.js'
import { UserData } from './user-data.js'
import { Sessions } from './sessions.js'
import { inBackground, runHook } from './unawaited.js'
import { Delivery } from './delivery.js'
import type { StabilizerMetrics } from './metrics.js'

export type { MemoryUsage, StabilizerStats, HeartbeatStats, RttPercentiles, ProtectionStats, ClusterStats } from './stats.js'
export type { ResumeRequest } from './resume.js'

export interface BroadcastOptions {
  /** Client id(s) that must not receive the message. */
  exclude?: string | readonly string[]
  /** Send only to members of this group. */
  group?: string
}

/** Longest client id accepted, in UTF-16 code units. */
export const maxClientIdLength = 256

/**
 * `app.stabilizer`: the public API. It owns the connections of this instance, their
 * lifecycle, fan-out and shutdown; the plugin entry wires it to Fastify.
 */
export class Stabilizer {
  /** @internal The slots of admitted upgrades and the per-IP limits (used by the upgrade admission). */
  readonly admission: AdmissionGate
  /** @internal */
  readonly tokens: ReconnectTokens
  /** @internal Where what other instances must see is kept. */
  readonly adapter: StabilizerAdapter
  private readonly registry: Registry
  private readonly userData: UserData
  private readonly binding: SocketBinding
  private readonly streams: StreamStarter
  private readonly sessions: Sessions
  private readonly counters = new Counters()
  private readonly instanceId = randomBytes(9).toString('base64url')
  private lifecycle: LifecycleState = 'running'
  private shutdownRun: Promise<ShutdownReport> | undefined
  /** Undefined when `heartbeatInterval` is 0. */
  private readonly heartbeat: HeartbeatScheduler | undefined
  private readonly delivery: Delivery
  private started: Promise<void> | undefined = undefined
  /** @internal Per-event Prometheus metrics; undefined when `metrics` is off. */
  metrics: StabilizerMetrics | undefined = undefined

  constructor (private readonly options: ResolvedOptions, private readonly log: FastifyBaseLogger) {
    this.adapter = options.adapter ?? new MemoryAdapter()
    this.admission = new AdmissionGate(options.maxConnections, options.maxConnectionsPerIp, options.connectRatePerIp)
    this.tokens = new ReconnectTokens(options.secrets, options.reconnectTokenTtl, options.tokenRequestsPerMinute, this.adapter)
    this.registry = new Registry({
      opened: (group) => this.adapter.subscribe(groupStream(group)),
      closed: (group) => this.adapter.unsubscribe(groupStream(group))
    })
    this.userData = new UserData(options, (victims) => this.evict(victims))
    this.heartbeat = options.heartbeatInterval === 0
      ? undefined
      : new HeartbeatScheduler({ interval: options.heartbeatInterval, timeout: options.heartbeatTimeout }, {
        sendPing: (beating) => this.binding.sendHeartbeat(beating as Connection),
        terminate: (beating) => {
          const connection = beating as Connection
          this.log.debug({ clientId: connection.id, lastRtt: connection.lastRtt, timeoutMs: options.heartbeatTimeout }, 'websocket heartbeat timeout')
          this.terminateConnection(connection, 'heartbeat_timeout')
        },
        measured: (rttMs) => this.metrics?.rtt(rttMs)
      })
    const self = this
    this.sessions = new Sessions({
      options,
      adapter: this.adapter,
      registry: this.registry,
      userData: this.userData,
      tokens: this.tokens,
      log,
      get metrics () { return self.metrics },
      get running () { return self.lifecycle === 'running' }
    })
    this.delivery = new Delivery(this.adapter, this.registry, options, this.counters.protection, {
      get metrics () { return self.metrics },
      closeConnection: (connection, code, reason, cause) => this.closeConnection(connection, code, reason, cause)
    }, log)
    this.binding = new SocketBinding(options, this.heartbeat, {
      get metrics () { return self.metrics },
      closed: (connection, code, reason) => this.closed(connection, code, reason),
      protocolError: (connection, code) => {
        connection.markClosing(code === CloseCode.MESSAGE_TOO_BIG ? 'message_too_big' : 'protocol_error', code)
        this.registry.deactivate(connection)
      },
      overRate: (connection) => this.overRate(connection),
      tokenRequested: (connection) => this.sessions.sendTokenInBand(connection),
      malformed: (connection) => {
        this.log.debug({ clientId: connection.id }, 'websocket protocol error: malformed stabilizer.v1 frame')
        this.closeConnection(connection, CloseCode.PROTOCOL_ERROR, 'malformed stabilizer.v1 frame', 'protocol_error')
      }
    }, log)
    const replayLimit = options.enableReconnect ? options.replayBufferSize : 0
    this.streams = new StreamStarter(this.adapter, replayLimit, {
      welcome: (connection, start) => this.sessions.welcome(connection, start),
      follow: (connection, stream, position) => { connection.socket.send(followFrame(stream, position.epoch, position.seq)) },
      send: (connection, message) => { this.delivery.deliverOne(connection, message) }
    }, log)
  }

  /** @internal Joins the adapter's cluster (at onReady). */
  async start (): Promise<void> {
    this.started ??= this.adapter.start({
      instanceId: this.instanceId,
      limits: {
        maxEntries: this.options.enableReconnect ? this.options.replayBufferSize : 0,
        maxBytes: this.options.replayBufferBytes,
        retentionMs: this.options.resumeWindow,
        maxSessions: this.options.maxRetainedSessions
      },
      connectionCount: () => this.registry.size,
      handlers: {
        deliver: (entry) => this.delivery.deliverEntry(entry),
        replaced: (clientId, since) => {
          const connection = this.registry.get(clientId)
          // An adapter that gives no time replaces whatever is here.
          if (connection !== undefined && connection.connectedAt <= (since ?? Infinity)) this.replacedElsewhere(connection)
        },
        disconnect: (clientId, code, reason) => { void this.disconnect(clientId, code, reason) },
        connectivity: (connected) => {
          this.metrics?.adapterConnectivity(connected)
          if (connected) this.log.info('websocket adapter connected')
          else this.log.warn('websocket adapter lost its shared store: messages to other instances wait or fail until it is back')
        }
      }
    }).then(() => { this.adapter.subscribe(allStream) })
    await this.started
  }

  /** 'running', then 'draining' once a shutdown began, then 'closed'. */
  get state (): LifecycleState {
    return this.lifecycle
  }

  /** @internal Per-IP caps and connect rates. */
  get perIp (): PerIpAdmission {
    return this.admission.perIp
  }

  /** @internal Whether reconnect tokens are signed with a random per-process key (none configured). */
  get ephemeralSecret (): boolean {
    return this.tokens.ephemeral
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
    if (isBound(socket)) throw new TypeError('This socket is already registered')
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
    return this.attach(clientId, socket, metadata, undefined, undefined)
  }

  /**
   * Closes the client's connection with `code` (default 1000) and `reason`; waits for the
   * close handshake, at most `closeTimeout` before the socket is terminated. A client held by
   * another instance is closed there (not awaited). Idempotent.
   * @returns true if this call closed a connection, false if there was none.
   */
  async disconnect (clientId: string, code: number = CloseCode.NORMAL, reason = ''): Promise<boolean> {
    const connection = this.registry.get(clientId)
    if (connection === undefined) return this.adapter.shared ? await this.adapter.disconnect(clientId, code, reason) : false
    this.closeConnection(connection, code, reason, 'server_disconnect')
    await connection.whenClosed()
    return true
  }

  /**
   * Sends one message (string → text, bytes → binary, anything else → JSON text).
   * Resolves true once `ws` has written it to the socket of a client connected here, or once
   * it is on its way to (or kept for the retained session of) a `stabilizer.v1` client
   * elsewhere; false if the client is connected and retained nowhere, or the socket failed
   * before writing it. Never rejects for a gone client.
   * @throws TypeError (as a rejection) when the message cannot be serialized.
   */
  async sendToClient (clientId: string, message: OutboundMessage): Promise<boolean> {
    const outbound = Outbound.of(encodeMessage(message))
    const connection = this.registry.get(clientId)
    // A plain client connected here has no stream to replay from: written directly.
    if (connection !== undefined && !connection.protocol) return await this.delivery.writeDirect(connection, outbound)
    if (connection === undefined && await this.adapter.locate(clientId) === undefined) return false
    try {
      const { local } = await this.delivery.publish(clientStream(clientId), outbound, undefined)
      return local === undefined ? true : await (local as Promise<boolean>)
    } catch (err) {
      this.log.warn({ err, clientId }, 'websocket direct message not published')
      return connection === undefined ? false : await this.delivery.writeDirect(connection, outbound)
    }
  }

  /**
   * Sends one message to every open connection (or a group's members) of every instance,
   * serialized once, never waiting on a slow socket, yielding every `maxConcurrentBroadcast`
   * sends. Counts are this instance's; `published` says whether it reached the others.
   * @throws BroadcastFailedError (as a rejection) when the message cannot be serialized.
   */
  async broadcast (message: OutboundMessage, options: BroadcastOptions = {}): Promise<BroadcastResult> {
    const startedAt = performance.now()
    let outbound
    try {
      outbound = Outbound.of(encodeMessage(message, true))
    } catch (err) {
      throw new BroadcastFailedError((err as Error).message, { cause: err })
    }
    const { exclude, group } = options
    const excluded = exclude === undefined ? undefined : typeof exclude === 'string' ? [exclude] : [...exclude]
    const stream = group === undefined ? allStream : groupStream(group)
    try {
      const { local } = await this.delivery.publish(stream, outbound, excluded)
      const counts = local === undefined ? { total: 0, sent: 0, failed: 0, skipped: 0, dropped: 0 } : await (local as ReturnType<typeof fanOut>)
      return this.broadcastDone(group, startedAt, { ...counts, published: true }, outbound)
    } catch (err) {
      // The shared store is unreachable: local clients still get it, without a position.
      this.log.warn({ err, stream }, 'websocket broadcast not published; delivered to local clients only')
      return this.broadcastDone(group, startedAt, { ...await this.delivery.fanOutLocally(stream, outbound, excluded), published: false }, outbound)
    }
  }

  private broadcastDone (group: string | undefined, startedAt: number, result: BroadcastResult, outbound: Outbound): BroadcastResult {
    this.metrics?.broadcast(group !== undefined, startedAt, result, outbound.plain)
    return result
  }

  /** Adds the client to `group`. @returns false if the client is not connected here or already a member. */
  join (clientId: string, group: string): boolean {
    const connection = this.registry.get(clientId)
    if (connection === undefined || !this.registry.join(connection, group)) return false
    if (connection.protocol) this.streams.follow(connection, groupStream(group))
    this.sessions.writeThrough(connection)
    return true
  }

  /** Removes the client from `group`. @returns false if it was not a member. */
  leave (clientId: string, group: string): boolean {
    const connection = this.registry.get(clientId)
    if (connection === undefined || !this.registry.leave(connection, group)) return false
    if (connection.protocol && this.streams.unfollow(connection, groupStream(group))) connection.socket.send(unfollowFrame(groupStream(group)))
    this.sessions.writeThrough(connection)
    return true
  }

  /** Groups of a connected client (empty for an unknown client). */
  getGroups (clientId: string): string[] {
    return [...(this.registry.get(clientId)?.groups ?? [])]
  }

  /** Client ids of the open connections of this instance. */
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
    this.sessions.assertReconnectEnabled()
    const connection = this.registry.get(clientId)
    if (connection === undefined) throw new ConnectionNotFoundError(clientId)
    return this.sessions.issueToken(connection)
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
   * Verifies and redeems a reconnect token (a token is valid once, across every instance of
   * the adapter), resolving with its client id.
   * @throws InvalidTokenError malformed, tampered, signed by an unknown key, not yet valid or already used.
   * @throws TokenExpiredError expired.
   */
  async validateReconnectToken (token: string): Promise<string> {
    this.sessions.assertReconnectEnabled()
    const claims = this.tokens.verify(token)
    if (!await this.tokens.redeem(claims)) throw new InvalidTokenError('already used')
    return claims.cid
  }

  /** @internal The session a redeemed token resumes, taken from the adapter (undefined when gone). */
  async takeSession (claims: TokenClaims): Promise<ResumeRequest['record']> {
    return await this.adapter.takeSession(claims.cid, claims.sid)
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
    this.userData.set(connection, key, value, this.registry.connections())
    this.sessions.writeThrough(connection)
  }

  /** The value stored under `key`, or undefined (also for an unknown client). */
  getUserData (clientId: string, key: string): unknown {
    return this.registry.get(clientId)?.userData?.get(key)?.value
  }

  getMemoryUsage (): MemoryUsage {
    return memoryUsage(this.registry, this.userData.total, this.adapter.retained?.())
  }

  /** What `GET /ws-stats` returns. */
  getStats (): StabilizerStats {
    return collectStats({
      status: this.lifecycle,
      counters: this.counters,
      registry: this.registry,
      memory: this.getMemoryUsage(),
      heartbeat: this.heartbeat?.counters,
      cluster: this.adapter.cluster(),
      options: this.options
    })
  }

  /**
   * Stops accepting upgrades (503), closes every socket with `shutdownCloseCode` and a reason
   * carrying a per-client `retry-after-ms` hint, waits for the handshakes until `timeoutMs`
   * (default `shutdownTimeout`), then terminates the rest. With a shared adapter the sessions
   * are kept for other instances to resume (a rolling deploy). Calling it again returns the
   * same report. `app.close()` calls it.
   */
  async gracefulShutdown (timeoutMs: number = this.options.shutdownTimeout): Promise<ShutdownReport> {
    if (this.shutdownRun !== undefined) return await this.shutdownRun
    if (!Number.isFinite(timeoutMs) || timeoutMs < 0) throw new RangeError('timeoutMs must be a finite number ≥ 0')
    this.lifecycle = 'draining'
    this.heartbeat?.stop()
    const { shutdownCloseCode, shutdownRetryDelay, shutdownRetrySpread } = this.options
    const label = shutdownCloseCode === CloseCode.SERVICE_RESTART ? 'service restart' : 'going away'
    this.shutdownRun = drain({
      connections: [...this.registry.live],
      deadlineMs: timeoutMs,
      closesPerTurn: this.options.maxConcurrentCleanup,
      close: (connection) => this.closeConnection(connection, shutdownCloseCode, `${label}; retry-after-ms=${shutdownRetryDelay + randomInt(shutdownRetrySpread + 1)}`, 'shutdown', null),
      terminate: (connection) => this.terminateConnection(connection, 'shutdown')
    }).then(async (report) => {
      this.lifecycle = 'closed'
      this.metrics?.shutdownFinished(report.durationMs)
      await this.stopAdapter()
      this.log.info({ report }, 'websocket shutdown complete')
      return report
    })
    return await this.shutdownRun
  }

  // ---- used by the plugin's upgrade integration --------------------------------------------

  /** @internal Whether one more connection for `clientId` fits (a replacement always fits). */
  hasRoomFor (clientId: string): boolean {
    return this.admission.hasRoom(this.registry.size, this.registry.has(clientId))
  }

  /** @internal Whether `clientId` has an open connection here (an upgrade for it is a replacement). */
  isConnected (clientId: string): boolean {
    return this.registry.has(clientId)
  }

  /** @internal */
  countRejection (reason: RejectionReason): void {
    this.counters.rejected[reason]++
  }

  /** @internal Registers an admitted socket (no limit check: its slot was reserved). */
  attach (clientId: string, socket: WebSocket, metadata: Readonly<Record<string, unknown>>, remoteAddress: string | undefined, ticket: AdmissionTicket | undefined, resume?: ResumeRequest): Connection {
    const connection = new Connection(clientId, socket, metadata, remoteAddress, Date.now(), socket.protocol === subprotocol)
    ticket?.connected()
    connection.ticket = ticket
    this.binding.bind(connection)
    this.counters.opened++
    const replaced = this.registry.add(connection)
    if (replaced !== undefined) {
      replaced.close(CloseCode.REPLACED, 'replaced by a newer connection', 'replaced', this.options.closeTimeout)
    }
    this.adapter.subscribe(clientStream(clientId))
    inBackground(this.log, this.adapter.claim(clientId, connection.connectedAt).then((claimed) => {
      // A connection that opened later holds the id on another instance: this one is the older.
      if (claimed === false && this.registry.get(clientId) === connection) this.replacedElsewhere(connection)
    }), 'claim')
    this.log.debug({ clientId, replaced: replaced !== undefined }, 'websocket connected')
    this.heartbeat?.add(connection)
    const stateRestored = resume === undefined ? false : this.sessions.restore(connection, resume, replaced)
    if (connection.protocol) {
      const streams = [allStream, clientStream(clientId), ...[...connection.groups].map(groupStream)]
      this.streams.start(connection, streams, resume === undefined ? undefined : { positions: resume.positions, stateRestored })
    }
    if (this.lifecycle !== 'running') {
      // A shutdown began while this upgrade was in flight: it would never be drained.
      this.closeConnection(connection, this.options.shutdownCloseCode, 'server shutting down', 'shutdown')
      return connection
    }
    if (this.options.onConnect !== undefined) runHook(this.log, 'onConnect', () => this.options.onConnect?.(connection))
    if (resume !== undefined && !connection.protocol) this.sessions.resumed(connection, { sessionId: resume.sessionId, stateRestored, replay: 'none', replayed: 0, missed: 0, historyLost: false })
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
  async destroyAll (): Promise<void> {
    this.heartbeat?.stop()
    for (const connection of this.registry.live) this.terminateConnection(connection, 'shutdown')
    this.lifecycle = 'closed'
    await this.stopAdapter()
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
    this.adapter.unsubscribe(clientStream(connection.id))
    this.sessions.ended(connection, cause, code)
    connection.ticket?.release()
    connection.ticket = undefined
    connection.catchUp = undefined
    this.heartbeat?.remove(connection)
    this.userData.free(connection)
    connection.markClosed()
    this.counters.recordClose(code, cause)
    this.metrics?.connectionClosed(connection.connectedAt)
    // A socket that ended without a close frame has no reason of its own: report the cause.
    const reason = reasonBuffer.length > 0 ? reasonBuffer.toString() : code === CloseCode.ABNORMAL ? cause : ''
    this.log.debug({ clientId: connection.id, code, cause, durationMs: Date.now() - connection.connectedAt }, 'websocket disconnected')
    const { onDisconnect } = this.options
    if (onDisconnect !== undefined) runHook(this.log, 'onDisconnect', () => onDisconnect(connection, code, reason))
  }

  private overRate (connection: Connection): void {
    this.counters.protection.inboundDropped++
    if (this.options.rateLimitPolicy === 'close' && this.closeConnection(connection, CloseCode.POLICY_VIOLATION, 'rate limit exceeded', 'rate_limited')) {
      this.counters.protection.rateLimitCloses++
      this.log.debug({ clientId: connection.id }, 'websocket closed for its inbound rate')
    }
  }

  /**
   * Frees the victims' user data at once (the write that needed the room goes ahead) and
   * closes them with 4001, `maxConcurrentCleanup` per event-loop turn.
   */
  private evict (victims: Connection[]): void {
    for (const victim of victims) {
      this.log.debug({ clientId: victim.id, policy: this.options.memoryEvictionPolicy }, 'websocket evicted for memory')
      this.registry.deactivate(victim)
      this.counters.protection.memoryEvictions++
    }
    paced(victims, this.options.maxConcurrentCleanup, (victim) => this.closeConnection(victim, CloseCode.MEMORY_EVICTED, 'memory limit', 'memory_eviction'))
      .catch((err: unknown) => { this.log.error({ err }, 'eviction failed') })
  }

  private async stopAdapter (): Promise<void> {
    try {
      await this.started
      await this.adapter.stop()
    } catch (err) {
      this.log.warn({ err }, 'websocket adapter did not stop cleanly')
    }
  }

  /** The client connected again on another instance, later than here. */
  private replacedElsewhere (connection: Connection): void {
    this.closeConnection(connection, CloseCode.REPLACED, 'replaced by a newer connection', 'replaced')
  }
}

/** @throws InvalidClientIdError unless `clientId` is a non-empty string of at most 256 characters. */
export function checkClientId (clientId: unknown): asserts clientId is string {
  if (typeof clientId !== 'string' || clientId.length === 0 || clientId.length > maxClientIdLength) {
    throw new InvalidClientIdError(`expected a non-empty string of at most ${maxClientIdLength} characters`)
  }
}
