import type { Connection, DisconnectCause } from './connection.js'
import type { ReplayLog } from './replay.js'

/** What is kept of a session after its connection ended, for the client to resume. */
export interface RetainedSession {
  readonly clientId: string
  readonly sessionId: string
  readonly userData: Map<string, { value: unknown, size: number }> | undefined
  readonly userDataBytes: number
  readonly groups: readonly string[]
  /** The outbound log of a `stabilizer.v1` session: what it was sent, and what it is sent while away. */
  readonly replay: ReplayLog | undefined
  readonly expiresAt: number
}

/** Which retained sessions a broadcast reaches. */
export interface SessionFilter {
  readonly group: string | undefined
  readonly exclude: ReadonlySet<string> | undefined
}

/**
 * Disconnects after which a client may come back to its session: losses and server-side
 * protections it can recover from. Not retained: an end on purpose (1000 from the client,
 * `disconnect()`), a replacement (its state moves to the replacing connection), a shutdown
 * (nothing is kept in memory that another instance could not see), a policy close.
 */
export function allowsResume (cause: DisconnectCause, code: number): boolean {
  switch (cause) {
    case 'connection_lost':
    case 'heartbeat_timeout':
    case 'slow_consumer':
    case 'message_too_big':
    case 'handler_error':
    case 'protocol_error':
      return true
    case 'client_closed':
      return code !== 1000
    default:
      return false
  }
}

/**
 * Retained sessions, one per client id, for `resumeWindow` ms and at most `maxSessions` of
 * them (past that the oldest goes). One unref'd timer, set for the next expiry, frees them.
 */
export class SessionStore {
  private readonly sessions = new Map<string, RetainedSession>()
  private timer: NodeJS.Timeout | undefined = undefined
  private userDataBytes = 0
  /** Retained sessions that have a replay log (only those can be sent anything while away). */
  replaySessions = 0

  constructor (private readonly windowMs: number, private readonly maxSessions: number) {}

  get size (): number {
    return this.sessions.size
  }

  /** Bytes held: user data plus replay logs (summed on demand: logs also grow through their connections' late messages). */
  get bytes (): number {
    let bytes = this.userDataBytes
    for (const session of this.sessions.values()) bytes += session.replay?.bytes ?? 0
    return bytes
  }

  /** Keeps what a closing connection held. */
  retain (connection: Connection, now = Date.now()): void {
    this.drop(connection.id)
    if (this.sessions.size >= this.maxSessions) this.drop(this.sessions.keys().next().value as string)
    const session: RetainedSession = {
      clientId: connection.id,
      sessionId: connection.sessionId,
      userData: connection.userData,
      userDataBytes: connection.userDataBytes,
      groups: [...connection.groups],
      replay: connection.replay,
      expiresAt: now + this.windowMs
    }
    this.sessions.set(connection.id, session)
    this.userDataBytes += session.userDataBytes
    if (session.replay !== undefined) this.replaySessions++
    this.timer ??= this.schedule(now)
  }

  /** Takes the retained session `sessionId` of `clientId` if it is still there. */
  take (clientId: string, sessionId: string, now = Date.now()): RetainedSession | undefined {
    const session = this.sessions.get(clientId)
    if (session === undefined || session.sessionId !== sessionId || session.expiresAt <= now) return undefined
    this.drop(clientId)
    return session
  }

  /**
   * Logs a message for the client's retained `stabilizer.v1` session, to be replayed when it
   * resumes; nothing when the client has no such session.
   */
  queue (clientId: string, payload: Buffer, binary: boolean): void {
    this.sessions.get(clientId)?.replay?.append(payload, binary)
  }

  /** Logs a message into `replay` if it is still the log of the client's retained session. */
  queueTo (clientId: string, replay: ReplayLog, payload: Buffer, binary: boolean): void {
    if (this.sessions.get(clientId)?.replay === replay) replay.append(payload, binary)
  }

  /** Logs a broadcast for every retained `stabilizer.v1` session it reaches. @returns how many. */
  queueBroadcast (filter: SessionFilter, payload: Buffer, binary: boolean): number {
    let queued = 0
    for (const session of this.sessions.values()) {
      if (session.replay === undefined) continue
      if (filter.exclude?.has(session.clientId) === true) continue
      if (filter.group !== undefined && !session.groups.includes(filter.group)) continue
      session.replay.append(payload, binary)
      queued++
    }
    return queued
  }

  /** Frees everything (shutdown). */
  clear (): void {
    this.sessions.clear()
    this.userDataBytes = 0
    this.replaySessions = 0
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
  }

  private drop (clientId: string): void {
    const session = this.sessions.get(clientId)
    if (session === undefined) return
    this.sessions.delete(clientId)
    this.userDataBytes -= session.userDataBytes
    if (session.replay !== undefined) this.replaySessions--
  }

  /** Expiry order is insertion order (one window for all): sweep from the front. */
  private schedule (now: number): NodeJS.Timeout | undefined {
    const first = this.sessions.values().next().value as RetainedSession | undefined
    if (first === undefined) return undefined
    const timer = setTimeout(() => {
      this.timer = undefined
      const current = Date.now()
      for (const session of this.sessions.values()) {
        if (session.expiresAt > current) break
        this.drop(session.clientId)
      }
      this.timer = this.schedule(current)
    }, Math.max(0, first.expiresAt - now))
    timer.unref()
    return timer
  }
}
