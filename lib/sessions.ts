/**
 * A client's session across its connections: tokens, write-through to the adapter, kept or
 * dropped at close, restored on a resume, and the welcome that reports the resume.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { StabilizerAdapter } from './adapter/adapter.js'
import type { Connection, DisconnectCause } from './connection.js'
import { WebSocketStabilizerError } from './errors.js'
import { writeTo } from './fanout.js'
import type { StabilizerMetrics } from './metrics.js'
import type { ResolvedOptions, ResumeInfo } from './options.js'
import type { Welcome } from './protocol.js'
import type { Registry } from './registry.js'
import { allowsResume, sessionRecord, type ResumeRequest, type StreamStart } from './resume.js'
import type { ReconnectTokens } from './tokens.js'
import { inBackground, runHook } from './unawaited.js'
import { holdWrites } from './write-coalescing.js'
import type { UserData } from './user-data.js'

/** What the sessions read of the stabilizer. */
export interface SessionsContext {
  readonly options: ResolvedOptions
  readonly adapter: StabilizerAdapter
  readonly registry: Registry
  readonly userData: UserData
  readonly tokens: ReconnectTokens
  readonly log: FastifyBaseLogger
  readonly metrics: StabilizerMetrics | undefined
  /** False once a shutdown began: `onResume` is no longer called. */
  readonly running: boolean
}

export class Sessions {
  constructor (private readonly ctx: SessionsContext) {}

  /** A signed, single-use token for the connection's session; the first one starts the session. */
  issueToken (connection: Connection): { token: string, expiresAt: number } {
    this.assertReconnectEnabled()
    const first = !connection.hasSession
    const issued = this.ctx.tokens.issue(connection.id, connection.sessionId)
    if (first) this.writeThrough(connection)
    return issued
  }

  assertReconnectEnabled (): void {
    if (!this.ctx.options.enableReconnect) throw new WebSocketStabilizerError('reconnect tokens are disabled (enableReconnect: false)')
  }

  /** Answers `{"t":"token"}`: a token, or when to ask again (null: reconnection is disabled). */
  sendTokenInBand (connection: Connection): void {
    let reply: string
    const wait = this.ctx.options.enableReconnect ? this.ctx.tokens.takeRequest(connection.id) : -1
    if (wait === 0) {
      const { token, expiresAt } = this.issueToken(connection)
      reply = JSON.stringify({ t: 'token', token, expiresAt })
    } else {
      reply = JSON.stringify({ t: 'token', token: null, retryAfter: wait < 0 ? null : wait })
    }
    connection.socket.send(reply)
  }

  /** With a shared adapter, a session is written as it changes, so it survives this instance dying. */
  writeThrough (connection: Connection): void {
    const { adapter, options } = this.ctx
    if (!adapter.shared || !connection.hasSession || !options.enableReconnect) return
    this.save(connection)
  }

  /** What becomes of a closed connection's session: retained for a resume, or forgotten. */
  ended (connection: Connection, cause: DisconnectCause, code: number): void {
    const { adapter, options, registry, log } = this.ctx
    const replacedHere = registry.has(connection.id)
    if (cause === 'replaced') return // the session lives on in the replacing connection
    const keep = connection.hasSession && options.enableReconnect && allowsResume(cause, code, adapter.shared) &&
      (this.ctx.running || adapter.shared)
    if (keep) this.save(connection)
    else if (connection.hasSession && adapter.shared) inBackground(log, adapter.dropSession(connection.id, connection.sessionId), 'dropSession')
    if (!replacedHere) inBackground(log, adapter.release(connection.id), 'release')
  }

  /** Gives a resuming connection its session's state: from the connection it replaces here, or from the record. */
  restore (connection: Connection, resume: ResumeRequest, replaced: Connection | undefined): boolean {
    const { registry, userData } = this.ctx
    connection.continueSession(resume.sessionId)
    if (replaced !== undefined && replaced.hasSession && replaced.sessionId === resume.sessionId) {
      userData.transfer(replaced, connection)
      for (const group of replaced.groups) registry.join(connection, group)
    } else if (resume.record !== undefined) {
      userData.restore(connection, resume.record.userData)
      for (const group of resume.record.groups) registry.join(connection, group)
    } else {
      return false
    }
    this.writeThrough(connection)
    return true
  }

  /**
   * The first frame on a `stabilizer.v1` connection, followed by the replayed and held messages
   * in order. The replay goes out in one turn and, where ws writes it at once, in one write: it
   * is bounded by the streams' logs.
   */
  welcome (connection: Connection, start: StreamStart): void {
    const { options, log } = this.ctx
    const issued = options.enableReconnect ? this.issueToken(connection) : undefined
    const welcome: Welcome = {
      t: 'welcome',
      v: 1,
      clientId: connection.id,
      sessionId: connection.sessionId,
      secret: connection.connectionSecret,
      token: issued?.token ?? null,
      tokenExpiresAt: issued?.expiresAt ?? null,
      heartbeat: { interval: options.heartbeatInterval, timeout: options.heartbeatTimeout },
      positions: start.positions,
      resume: start.report ?? null
    }
    holdWrites(connection.socket)
    connection.socket.send(JSON.stringify(welcome))
    for (const message of start.messages) writeTo(connection, message.frameFor(connection))
    const { report } = start
    if (report !== undefined) {
      const info: ResumeInfo = { sessionId: connection.sessionId, stateRestored: report.stateRestored, replay: report.outcome, replayed: report.replayed, missed: report.missed, historyLost: report.historyLost }
      log.debug({ clientId: connection.id, stateRestored: info.stateRestored, replay: info.replay, replayed: info.replayed, missed: info.missed, historyLost: info.historyLost }, 'websocket session resumed')
      this.resumed(connection, info)
    }
  }

  /** Counts a resume and calls `onResume`. */
  resumed (connection: Connection, info: ResumeInfo): void {
    this.ctx.metrics?.resumed({ outcome: info.replay, stateRestored: info.stateRestored, replayed: info.replayed, missed: info.missed })
    const { onResume } = this.ctx.options
    if (onResume !== undefined && this.ctx.running) runHook(this.ctx.log, 'onResume', () => onResume(connection, info))
  }

  private save (connection: Connection): void {
    const { adapter, userData, log } = this.ctx
    inBackground(log, adapter.saveSession(sessionRecord(connection, userData.serialize(connection))), 'saveSession')
  }
}
