/**
 * The in-process adapter (the default), and the hub through which several apps in one process
 * share streams, presence, sessions and tokens as one in-memory cluster.
 */
import type {
  AdapterLimits, ClusterView, InstanceContext, PublishResult, SessionRecord, StabilizerAdapter,
  StreamMessage, StreamPosition, StreamRead
} from './adapter.js'
import { StreamLog } from './stream-log.js'

interface HeldSession {
  readonly record: SessionRecord
  /** User-data bytes: keys plus JSON texts. */
  readonly bytes: number
  expiresAt: number
}

/**
 * How long an empty stream nobody reads keeps its epoch and seq: well past the retention, so
 * that a client resuming a quiet stream continues it instead of being told its history was lost.
 */
function idleStreamMs (retentionMs: number): number {
  return Math.max(10 * retentionMs, 600_000)
}

/** Idle streams without readers, retained sessions and redeemed tokens are swept this often (at most). */
const sweepEveryMs = 10_000

/**
 * What the instances of one in-process cluster share. Bounded: stream logs by the limits of
 * the first instance started, idle streams forgotten after the retention, sessions capped by
 * `maxSessions`, redeemed tokens by `maxRedeemedTokens` (past it, redemption fails closed).
 */
export class MemoryHub {
  private readonly instances = new Set<MemoryAdapter>()
  private readonly streams = new Map<string, StreamLog>()
  private readonly sessions = new Map<string, HeldSession>()
  private readonly presence = new Map<string, { holder: MemoryAdapter, since: number }>()
  /** Token id → expiry; insertion order is nearly expiry order (one TTL for all tokens). */
  private readonly redeemed = new Map<string, number>()
  private limits: AdapterLimits | undefined = undefined
  private sweeper: NodeJS.Timeout | undefined = undefined
  private lastTs = 0

  constructor (private readonly maxRedeemedTokens = 100_000) {}

  /** @internal */
  join (instance: MemoryAdapter, limits: AdapterLimits): void {
    this.limits ??= limits
    this.instances.add(instance)
    if (this.sweeper === undefined) {
      this.sweeper = setInterval(() => this.sweep(Date.now()), Math.min(sweepEveryMs, Math.max(1000, limits.retentionMs)))
      this.sweeper.unref()
    }
  }

  /** @internal Drops the instance's presence; the sessions it held start expiring. */
  leave (instance: MemoryAdapter, now = Date.now()): void {
    if (!this.instances.delete(instance)) return
    for (const [clientId, { holder }] of this.presence) {
      if (holder !== instance) continue
      this.presence.delete(clientId)
      const held = this.sessions.get(clientId)
      if (held !== undefined) held.expiresAt = now + this.bounds.retentionMs
    }
    if (this.instances.size === 0) {
      if (this.sweeper !== undefined) clearInterval(this.sweeper)
      this.sweeper = undefined
    }
  }

  /** Instances started and not stopped. */
  get instanceCount (): number {
    return this.instances.size
  }

  /** Stream logs held (for tests and stats). */
  get streamCount (): number {
    return this.streams.size
  }

  /** Bytes held by the stream logs. */
  get streamBytes (): number {
    let bytes = 0
    for (const log of this.streams.values()) bytes += log.bytes
    return bytes
  }

  /** Retained sessions held. */
  get sessionCount (): number {
    return this.sessions.size
  }

  /** User-data bytes of the retained sessions. */
  get sessionBytes (): number {
    let bytes = 0
    for (const held of this.sessions.values()) bytes += held.bytes
    return bytes
  }

  /** Redeemed token ids still remembered. */
  get redeemedTokens (): number {
    return this.redeemed.size
  }

  /** @internal */
  log (stream: string): StreamLog {
    let log = this.streams.get(stream)
    if (log === undefined) {
      log = new StreamLog(stream, this.bounds)
      this.streams.set(stream, log)
    }
    return log
  }

  /** @internal Appends and delivers to every instance that subscribed, the publisher last. */
  publish (origin: MemoryAdapter, stream: string, message: StreamMessage): PublishResult {
    // Strictly increasing across streams, so that a replay merges them in publish order.
    this.lastTs = Math.max(Date.now(), this.lastTs + 0.001)
    const entry = this.log(stream).append(message, origin.instanceId, this.lastTs)
    for (const instance of this.instances) {
      if (instance !== origin) instance.receive(entry)
    }
    return { position: { epoch: entry.epoch, seq: entry.seq }, local: origin.receive(entry) }
  }

  /** @internal */
  claim (instance: MemoryAdapter, clientId: string, since: number): boolean {
    const previous = this.presence.get(clientId)
    if (previous !== undefined && previous.holder !== instance && previous.since > since) return false
    this.presence.set(clientId, { holder: instance, since })
    if (previous !== undefined && previous.holder !== instance) previous.holder.replacedElsewhere(clientId, since)
    return true
  }

  /** @internal */
  release (instance: MemoryAdapter, clientId: string, now = Date.now()): void {
    if (this.presence.get(clientId)?.holder !== instance) return
    this.presence.delete(clientId)
    const held = this.sessions.get(clientId)
    if (held !== undefined) held.expiresAt = now + this.bounds.retentionMs
  }

  /** @internal */
  holder (clientId: string): MemoryAdapter | undefined {
    return this.presence.get(clientId)?.holder
  }

  /** @internal */
  hasSession (clientId: string, now = Date.now()): boolean {
    const held = this.sessions.get(clientId)
    return held !== undefined && this.alive(clientId, held, now)
  }

  /** @internal */
  saveSession (record: SessionRecord, now = Date.now()): void {
    this.sessions.delete(record.clientId)
    if (this.sessions.size >= this.bounds.maxSessions) this.dropOldestSession()
    let bytes = 0
    for (const [key, json] of record.userData) bytes += Buffer.byteLength(key) + Buffer.byteLength(json)
    this.sessions.set(record.clientId, { record, bytes, expiresAt: now + this.bounds.retentionMs })
  }

  /** @internal */
  takeSession (clientId: string, sessionId: string, now = Date.now()): SessionRecord | undefined {
    const held = this.sessions.get(clientId)
    if (held === undefined || held.record.sessionId !== sessionId || !this.alive(clientId, held, now)) return undefined
    this.sessions.delete(clientId)
    return held.record
  }

  /** @internal */
  dropSession (clientId: string, sessionId: string): void {
    if (this.sessions.get(clientId)?.record.sessionId === sessionId) this.sessions.delete(clientId)
  }

  /** @internal */
  redeemToken (tokenId: string, expiresAt: number, now = Date.now()): boolean {
    this.forgetExpiredTokens(now)
    if (this.redeemed.has(tokenId)) return false
    if (this.redeemed.size >= this.maxRedeemedTokens) {
      // Tokens from instances with another TTL break the order: sweep them all before refusing.
      for (const [id, expiry] of this.redeemed) if (expiry <= now) this.redeemed.delete(id)
      if (this.redeemed.size >= this.maxRedeemedTokens) return false
    }
    this.redeemed.set(tokenId, expiresAt)
    return true
  }

  /** @internal */
  view (): ClusterView {
    let connections = 0
    for (const instance of this.instances) connections += instance.connectionCount()
    return { instances: this.instances.size, connections }
  }

  /** @internal Forgets everything (a single-process adapter that stopped). */
  clear (): void {
    this.streams.clear()
    this.sessions.clear()
    this.presence.clear()
    this.redeemed.clear()
  }

  /** @internal Forgets idle streams nobody reads, expired sessions and tokens. */
  sweep (now: number): void {
    const { retentionMs } = this.bounds
    for (const [stream, log] of this.streams) {
      log.expire(now)
      if (log.size === 0 && now - log.touchedAt > idleStreamMs(retentionMs) && !this.isRead(stream)) this.streams.delete(stream)
    }
    for (const [clientId, held] of this.sessions) {
      if (!this.alive(clientId, held, now)) this.sessions.delete(clientId)
    }
    this.forgetExpiredTokens(now)
  }

  /** Expiry order is nearly insertion order: sweep from the front. */
  private forgetExpiredTokens (now: number): void {
    for (const [id, expiry] of this.redeemed) {
      if (expiry > now) break
      this.redeemed.delete(id)
    }
  }

  private isRead (stream: string): boolean {
    for (const instance of this.instances) if (instance.subscribed(stream)) return true
    return false
  }

  /** A session lives while an instance holds its client, and `retentionMs` after that. */
  private alive (clientId: string, held: HeldSession, now: number): boolean {
    return held.expiresAt > now || this.presence.has(clientId)
  }

  private dropOldestSession (): void {
    const oldest = this.sessions.keys().next()
    if (oldest.done !== true) this.sessions.delete(oldest.value)
  }

  private get bounds (): AdapterLimits {
    if (this.limits === undefined) throw new Error('MemoryHub used before any instance started')
    return this.limits
  }
}

export interface MemoryAdapterOptions {
  /** Share streams, presence, sessions and tokens with the other adapters of this hub (apps in one process). */
  hub?: MemoryHub
}

/**
 * The default adapter. Alone, it is one process's state (`shared` false: sessions are kept
 * when a connection ends, and a shutdown keeps nothing). Given a `hub`, several apps in one
 * process behave as one cluster (`shared` true), which is how cluster behaviour is tested
 * without Redis.
 */
export class MemoryAdapter implements StabilizerAdapter {
  readonly shared: boolean
  private readonly hub: MemoryHub
  private instance: InstanceContext | undefined = undefined
  private readonly subscriptions = new Map<string, number>()
  private stopped = false

  constructor (options: MemoryAdapterOptions = {}) {
    this.shared = options.hub !== undefined
    this.hub = options.hub ?? new MemoryHub()
  }

  /** @internal */
  get instanceId (): string {
    return this.context.instanceId
  }

  async start (instance: InstanceContext): Promise<void> {
    if (this.instance !== undefined) throw new Error('this adapter was already started: give each app its own adapter')
    this.instance = instance
    this.hub.join(this, instance.limits)
  }

  async stop (): Promise<void> {
    this.stopped = true
    this.hub.leave(this)
    this.subscriptions.clear()
    // Alone, nothing outlives the process: what it kept goes with it.
    if (!this.shared) this.hub.clear()
  }

  async publish (stream: string, message: StreamMessage): Promise<PublishResult> {
    if (this.stopped) throw new Error('the adapter was stopped')
    return this.hub.publish(this, stream, message)
  }

  subscribe (stream: string): void {
    this.subscriptions.set(stream, (this.subscriptions.get(stream) ?? 0) + 1)
  }

  unsubscribe (stream: string): void {
    const count = (this.subscriptions.get(stream) ?? 0) - 1
    if (count > 0) this.subscriptions.set(stream, count)
    else this.subscriptions.delete(stream)
  }

  async top (stream: string): Promise<StreamPosition> {
    return this.hub.log(stream).top
  }

  async read (stream: string, after: StreamPosition | undefined, limit: number): Promise<StreamRead> {
    return this.hub.log(stream).read(after, limit, Date.now())
  }

  async claim (clientId: string, since = Date.now()): Promise<boolean> {
    return this.hub.claim(this, clientId, since)
  }

  async release (clientId: string): Promise<void> {
    this.hub.release(this, clientId)
  }

  async locate (clientId: string): Promise<'connected' | 'retained' | undefined> {
    if (this.hub.holder(clientId) !== undefined) return 'connected'
    return this.hub.hasSession(clientId) ? 'retained' : undefined
  }

  async disconnect (clientId: string, code: number, reason: string): Promise<boolean> {
    const holder = this.hub.holder(clientId)
    if (holder === undefined) return false
    holder.context.handlers.disconnect(clientId, code, reason)
    return true
  }

  cluster (): ClusterView | undefined {
    return this.shared ? this.hub.view() : undefined
  }

  async saveSession (record: SessionRecord): Promise<void> {
    this.hub.saveSession(record)
  }

  async takeSession (clientId: string, sessionId: string): Promise<SessionRecord | undefined> {
    return this.hub.takeSession(clientId, sessionId)
  }

  async dropSession (clientId: string, sessionId: string): Promise<void> {
    this.hub.dropSession(clientId, sessionId)
  }

  async redeemToken (tokenId: string, expiresAt: number): Promise<boolean> {
    return this.hub.redeemToken(tokenId, expiresAt)
  }

  retained (): { sessions: number, bytes: number } {
    return { sessions: this.hub.sessionCount, bytes: this.hub.sessionBytes }
  }

  /** @internal */
  subscribed (stream: string): boolean {
    return this.subscriptions.has(stream)
  }

  /** @internal An entry of the hub: handed to the app when it reads the stream. */
  receive (entry: Parameters<InstanceContext['handlers']['deliver']>[0]): unknown {
    if (this.instance === undefined || !this.subscriptions.has(entry.stream)) return undefined
    return this.instance.handlers.deliver(entry)
  }

  /** @internal */
  replacedElsewhere (clientId: string, since: number): void {
    this.instance?.handlers.replaced(clientId, since)
  }

  /** @internal */
  connectionCount (): number {
    return this.instance?.connectionCount() ?? 0
  }

  private get context (): InstanceContext {
    if (this.instance === undefined) throw new Error('the adapter was not started')
    return this.instance
  }
}
