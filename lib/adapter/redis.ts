/**
 * The Redis adapter (`fastify-websocket-stabilizer/redis`): streams, presence, instance
 * heartbeats, sessions and tokens in Redis, so that instances sharing it behave as one.
 */
import { randomBytes } from 'node:crypto'
import type { EventEmitter } from 'node:events'
import type { Cluster, Redis } from 'ioredis'
import type {
  ClusterView,
  InstanceContext,
  PublishResult,
  SessionRecord,
  StabilizerAdapter,
  StreamEntry,
  StreamMessage,
  StreamPosition,
  StreamRead
} from './adapter.js'
import { AdapterUnavailableError, InvalidOptionError } from '../errors.js'
import {
  bounded,
  closeConnection,
  openConnections,
  waitReady,
  type Connections,
  type RedisClient,
  type RedisSource
} from './redis-connection.js'
import {
  claimScript,
  dropSessionScript,
  heartbeatScript,
  leaveScript,
  publishScript,
  readScript,
  refreshScript,
  releaseScript,
  runScript,
  script,
  startScript,
  takeSessionScript,
  type Script
} from './redis-scripts.js'
import { entryOf, lookbackAfterReconnect, StreamSubscriptions, type StreamStart } from './redis-streams.js'
import { partitionOf, partitionTags, slotOf, streamTag } from './redis-partitions.js'

export interface RedisAdapterOptions {
  /**
   * Where Redis is: a `redis://` or `rediss://` URL (user, password and db in it), ioredis
   * options, a Redis Cluster as `{ cluster: startupNodes, options?: ClusterOptions }`, or your
   * own ioredis `Redis` or `Cluster` client (used as it is for commands and left open by
   * `stop()`; the adapter duplicates it for its subscriptions).
   */
  redis: RedisSource
  /** Prefix of every key and channel, so that several clusters can share one Redis. Default `'fws:'`. */
  keyPrefix?: string
  /** The longest any call waits for Redis, in ms; past it the call rejects with `AdapterUnavailableError`. Default 2000. */
  commandTimeout?: number
  /** How long `start()` waits for Redis before it rejects, in ms. Default 5000. */
  connectTimeout?: number
  /** An instance that stopped (or died) leaves `cluster()` this long after its last heartbeat, in ms; it beats every third of it. Default 5000. */
  instanceTtl?: number
  /** How long an entry that arrived ahead of a missing one is held before the missing one is read from the log, in ms. Default 200. */
  gapTimeout?: number
  /** How often the positions of followed streams are checked against Redis (what a silent subscription lost is then delivered), in ms. Default 30000. */
  positionCheckInterval?: number
}

/** Presence keys live this long without a refresh (a holder refreshes them every third of it). */
const presenceTtl = 30_000

const defaults = {
  keyPrefix: 'fws:',
  commandTimeout: 2000,
  connectTimeout: 5000,
  instanceTtl: 5000,
  gapTimeout: 200,
  positionCheckInterval: 30_000
}

const scripts = {
  publish: script(publishScript),
  claim: script(claimScript),
  read: script(readScript),
  start: script(startScript),
  heartbeat: script(heartbeatScript),
  leave: script(leaveScript),
  release: script(releaseScript),
  refresh: script(refreshScript),
  takeSession: script(takeSessionScript),
  dropSession: script(dropSessionScript)
}

type ControlMessage =
  | { t: 'r', c: string, s?: number }
  | { t: 'd', c: string, code: number, reason: string }
  | { t: 'p', n: number, i?: number }

function positive (name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new InvalidOptionError(`redisAdapter.${name}`, 'must be a positive number of milliseconds')
  }
  return value
}

/** The Redis adapter: pass it as the stabilizer's `adapter` option. */
export function redisAdapter (options: RedisAdapterOptions): StabilizerAdapter {
  if (typeof options !== 'object' || options === null) throw new InvalidOptionError('redisAdapter', 'expects an options object')
  const { redis } = options
  if (typeof redis !== 'string' && (typeof redis !== 'object' || redis === null)) {
    throw new InvalidOptionError('redisAdapter.redis', 'must be a redis:// URL, ioredis options, or an ioredis client')
  }
  const keyPrefix = options.keyPrefix ?? defaults.keyPrefix
  if (typeof keyPrefix !== 'string' || /[{}]/.test(keyPrefix)) {
    throw new InvalidOptionError('redisAdapter.keyPrefix', 'must be a string without { or } (the adapter puts hash tags after it)')
  }
  return new RedisAdapter(redis, {
    keyPrefix,
    commandTimeout: positive('commandTimeout', options.commandTimeout, defaults.commandTimeout),
    connectTimeout: positive('connectTimeout', options.connectTimeout, defaults.connectTimeout),
    instanceTtl: positive('instanceTtl', options.instanceTtl, defaults.instanceTtl),
    gapTimeout: positive('gapTimeout', options.gapTimeout, defaults.gapTimeout),
    positionCheckInterval: positive('positionCheckInterval', options.positionCheckInterval, defaults.positionCheckInterval)
  })
}

type Listener = Parameters<EventEmitter['on']>[1]

type Settings = Required<Omit<RedisAdapterOptions, 'redis'>>

function newEpoch (): string {
  return randomBytes(6).toString('base64url')
}

class RedisAdapter implements StabilizerAdapter {
  readonly shared = true
  readonly #source: RedisSource
  readonly #settings: Settings
  #instance: InstanceContext | undefined
  #connections: Connections | undefined
  #streams: StreamSubscriptions | undefined
  #stopping: Promise<void> | undefined
  #timers: NodeJS.Timeout[] = []
  #cluster: ClusterView | undefined
  #alive = new Set<string>()
  /**
   * Clients this instance holds (claimed, not released): when their connection opened and
   * their session as last saved. Their presence and sessions are kept alive, and written
   * again if Redis lost them.
   */
  readonly #held = new Map<string, { since: number, saved: string | undefined }>()
  /** Each client's session write in flight, the next one waits for it. */
  readonly #saving = new Map<string, Promise<void>>()
  #lastErrors = new Map<RedisClient, Error>()
  #listeners: Array<[EventEmitter, string, Listener]> = []
  #connected = true
  #subscriberUp = false
  /** Liveness probes, one per probed channel (the control channel; on a Cluster, one per partition). */
  #probes: Array<{ sent: number, seen: number, sentAt: number }> = []

  constructor (source: RedisSource, settings: Settings) {
    this.#source = source
    this.#settings = settings
  }

  // ---- keys -------------------------------------------------------------------------------
  // A stream's keys and channel share its partition's tag: one script touches one slot, and
  // the script's SPUBLISH goes to a channel of that slot (Redis refuses any other).
  #meta (stream: string): string { return `${this.#settings.keyPrefix}{${streamTag(stream)}}:s:${stream}:meta` }
  #log (stream: string): string { return `${this.#settings.keyPrefix}{${streamTag(stream)}}:s:${stream}:log` }
  #channel (stream: string): string { return `${this.#settings.keyPrefix}{${streamTag(stream)}}:s:${stream}:ch` }
  /** The channel this instance probes partition `partition` with (on a Cluster). */
  #probeChannel (partition: number): string { return `${this.#settings.keyPrefix}{${partitionTags[partition]}}:probe:${this.#ctx.instanceId}` }
  #owner (clientId: string): string { return `${this.#settings.keyPrefix}{c:${clientId}}:owner` }
  #session (clientId: string): string { return `${this.#settings.keyPrefix}{c:${clientId}}:session` }
  #token (tokenId: string): string { return `${this.#settings.keyPrefix}{t:${tokenId}}` }
  #control (instanceId: string): string { return `${this.#settings.keyPrefix}{${partitionTags[partitionOf(`i:${instanceId}`)]}}:i:${instanceId}:ctl` }
  get #members (): string { return `${this.#settings.keyPrefix}{i}:members` }
  get #instancePrefix (): string { return `${this.#settings.keyPrefix}{i}:instance:` }

  get #sharded (): boolean {
    return this.#connections?.commands.isCluster === true
  }

  /** How long a stream's epoch and seq outlive its last write, read or check. */
  get #metaTtl (): number {
    return Math.max(2 * this.#limits.retentionMs, 3 * this.#settings.positionCheckInterval, 60_000)
  }

  get #limits (): InstanceContext['limits'] {
    return this.#ctx.limits
  }

  get #ctx (): InstanceContext {
    if (this.#instance === undefined) throw new Error('the Redis adapter is not started')
    return this.#instance
  }

  get #conn (): Connections {
    if (this.#connections === undefined || this.#stopping !== undefined) {
      throw new AdapterUnavailableError('the Redis adapter is stopped')
    }
    return this.#connections
  }

  async #call<T> (run: (client: RedisClient) => Promise<T>): Promise<T> {
    const conn = this.#conn
    return await bounded(conn.commands, this.#settings.commandTimeout, conn.address, async () => await run(conn.commands))
  }

  async #script (target: Script, keys: string[], args: Array<string | number | Buffer>, binary = false): Promise<unknown> {
    return await this.#call(async (client) => await runScript(client, target, keys, args, binary))
  }

  // ---- lifecycle --------------------------------------------------------------------------
  async start (instance: InstanceContext): Promise<void> {
    if (this.#instance !== undefined) throw new Error('the Redis adapter was already started')
    this.#instance = instance
    const { connectTimeout } = this.#settings
    try {
      const conn = await openConnections(this.#source, connectTimeout)
      this.#connections = conn
      this.#watch(conn.commands, false)
      this.#watch(conn.subscriber, true)
      this.#streams = new StreamSubscriptions({
        instanceId: instance.instanceId,
        gapTimeout: this.#settings.gapTimeout,
        channelOf: (stream) => this.#channel(stream),
        subscribe: async (channels) => { await this.#subscribe(channels) },
        unsubscribe: async (channels) => { await this.#unsubscribe(channels) },
        start: async (stream, since) => await this.#start(stream, since),
        read: async (stream, after, limit) => await this.#read(stream, after, limit),
        deliver: (entry) => instance.handlers.deliver(entry),
        subscriberReady: () => this.#subscriberUp
      })
      await waitReady(conn.commands, connectTimeout, conn.address, () => this.#lastErrors.get(conn.commands))
      await waitReady(conn.subscriber, connectTimeout, conn.address, () => this.#lastErrors.get(conn.subscriber))
      await this.#onSubscriberReady()
      await this.#heartbeat()
    } catch (err) {
      await this.#shutdown()
      throw err
    }
    const every = (ms: number, task: () => Promise<void>): void => {
      const timer = setInterval(() => { task().catch(() => {}) }, ms)
      timer.unref()
      this.#timers.push(timer)
    }
    every(Math.max(50, Math.floor(this.#settings.instanceTtl / 3)), async () => { await this.#beat() })
    every(Math.max(50, Math.min(presenceTtl / 3, Math.floor(this.#limits.retentionMs / 3))), async () => { await this.#refreshHeld() })
    every(this.#settings.positionCheckInterval, async () => { await this.#streams?.check() })
  }

  async stop (): Promise<void> {
    if (this.#connections === undefined) return
    this.#stopping ??= this.#leave()
    await this.#stopping
  }

  async #leave (): Promise<void> {
    for (const timer of this.#timers) clearInterval(timer)
    this.#timers = []
    const conn = this.#connections!
    const instanceId = this.#ctx.instanceId
    const ms = this.#settings.commandTimeout
    const held = [...this.#held.keys()]
    this.#held.clear()
    // Best effort: what cannot be removed now expires by itself.
    await Promise.allSettled([
      ...held.map(async (clientId) => await bounded(conn.commands, ms, conn.address, async () =>
        await runScript(conn.commands, scripts.release, [this.#owner(clientId), this.#session(clientId)], [instanceId, this.#limits.retentionMs]))),
      bounded(conn.commands, ms, conn.address, async () =>
        await runScript(conn.commands, scripts.leave, [this.#members, this.#instancePrefix], [instanceId]))
    ])
    await this.#shutdown()
  }

  /** Closes what start() opened; no timer or listener is left. */
  async #shutdown (): Promise<void> {
    for (const timer of this.#timers) clearInterval(timer)
    this.#timers = []
    this.#streams?.close()
    const conn = this.#connections
    for (const [client, event, listener] of this.#listeners) client.off(event, listener)
    this.#listeners = []
    if (conn === undefined) return
    // Keep swallowing errors while the connections close: an unhandled one crashes the process.
    const swallow = (): void => {}
    conn.subscriber.on('error', swallow)
    await closeConnection(conn.subscriber, this.#settings.commandTimeout)
    if (conn.ownsCommands) {
      conn.commands.on('error', swallow)
      await closeConnection(conn.commands, this.#settings.commandTimeout)
    }
  }

  #on (client: RedisClient, event: string, listener: Listener): void {
    const emitter = client as EventEmitter
    emitter.on(event, listener)
    this.#listeners.push([emitter, event, listener])
  }

  #watch (client: RedisClient, subscriber: boolean): void {
    this.#on(client, 'error', (err: Error) => { this.#lastErrors.set(client, err) })
    this.#on(client, 'close', () => {
      if (subscriber) this.#subscriberUp = false
      this.#setConnected(false)
    })
    if (subscriber) {
      this.#on(client, 'messageBuffer', (channel: Buffer, message: Buffer) => { this.#receive(String(channel), message) })
      this.#on(client, 'smessageBuffer', (channel: Buffer, message: Buffer) => { this.#receive(String(channel), message) })
      // ioredis resubscribed its sharded subscribers after a topology change (a failover, a
      // slot migration): read what the subscriptions missed meanwhile.
      this.#on(client, 'subscribersReady', () => {
        if (this.#stopping === undefined && this.#timers.length > 0) this.#streams?.check(lookbackAfterReconnect).catch(() => {})
      })
      this.#on(client, 'ready', () => {
        if (this.#stopping === undefined && this.#timers.length > 0) {
          this.#onSubscriberReady().catch(() => {}) // retried at the next 'ready'
        }
      })
    } else {
      this.#on(client, 'ready', () => {
        if (this.#stopping !== undefined || this.#timers.length === 0) return
        // Back from an outage: announce this instance and its clients at once (Redis may have restarted empty).
        this.#heartbeat().then(async () => { await this.#refreshHeld() }).catch(() => {})
      })
    }
  }

  #setConnected (connected: boolean): void {
    if (connected === this.#connected) return
    this.#connected = connected
    if (this.#timers.length === 0) return // not started, or stopping
    this.#ctx.handlers.connectivity?.(connected)
  }

  /** Subscribes the control channel and every followed stream, then reads what was missed. */
  async #onSubscriberReady (): Promise<void> {
    this.#subscriberUp = true
    await this.#subscribe(this.#probeChannels())
    await this.#streams!.resubscribe()
    for (const probe of this.#probes) probe.seen = probe.sent
    this.#setConnected(this.#conn.commands.status === 'ready')
  }

  /** The channels whose probes tell whether the subscriptions still hear: on a Cluster one per partition (its shard's subscription), else the control channel. */
  #probeChannels (): string[] {
    const channels = this.#sharded
      ? [this.#control(this.#ctx.instanceId), ...partitionTags.map((_tag, partition) => this.#probeChannel(partition))]
      : [this.#control(this.#ctx.instanceId)]
    while (this.#probes.length < channels.length) this.#probes.push({ sent: 0, seen: 0, sentAt: 0 })
    return channels
  }

  async #subscribe (channels: string[]): Promise<void> {
    const conn = this.#conn
    await bounded(conn.subscriber, this.#settings.commandTimeout, conn.address, async () => {
      // One SSUBSCRIBE per slot: a Cluster refuses channels of several slots in one.
      if (this.#sharded) await Promise.all([...bySlot(channels).values()].map(async (batch) => await (conn.subscriber as Cluster).ssubscribe(...batch)))
      else await (conn.subscriber as Redis).subscribe(...channels)
    })
  }

  async #unsubscribe (channels: string[]): Promise<void> {
    const conn = this.#conn
    await bounded(conn.subscriber, this.#settings.commandTimeout, conn.address, async () => {
      if (this.#sharded) await Promise.all([...bySlot(channels).values()].map(async (batch) => await (conn.subscriber as Cluster).sunsubscribe(...batch)))
      else await (conn.subscriber as Redis).unsubscribe(...channels)
    })
  }

  /**
   * A partition's probe went unheard (its shard's subscription went silent, or lost the slot
   * without ioredis noticing): subscribes its channels again and reads what they missed.
   */
  async #restartPartition (slot: number): Promise<void> {
    const channels = [...this.#streams!.channels(), ...this.#probeChannels()].filter((channel) => slotOf(tagOf(channel)) === slot)
    await this.#unsubscribe(channels).catch(() => {})
    await this.#subscribe(channels)
    await this.#streams!.check(lookbackAfterReconnect)
  }

  #receive (channel: string, message: Buffer): void {
    if (this.#streams?.receive(channel, message) === true) return
    if (this.#instance === undefined) return
    if (channel !== this.#control(this.#instance.instanceId) && !(this.#sharded && channel.includes(':probe:'))) return
    let control: ControlMessage
    try {
      control = JSON.parse(String(message)) as ControlMessage
    } catch {
      return
    }
    const { handlers } = this.#instance
    if (control.t === 'p') {
      const probe = this.#probes[control.i ?? 0]
      if (probe !== undefined) probe.seen = Math.max(probe.seen, control.n)
    } else if (control.t === 'r') {
      const since = control.s ?? Date.now()
      const held = this.#held.get(control.c)
      // Told once: the presence refresh must not tell it again. A connection here that opened
      // after the claim's is newer and stays held.
      if (held !== undefined && held.since <= since) this.#held.delete(control.c)
      handlers.replaced(control.c, since)
    } else if (control.t === 'd') handlers.disconnect(control.c, control.code, control.reason)
  }

  /** Announces this instance, learns the others, and checks that the subscription still hears. */
  async #beat (): Promise<void> {
    this.#streams?.sweep()
    try {
      await this.#heartbeat()
    } catch {
      this.#setConnected(false)
      return
    }
    const conn = this.#conn
    // A subscription can go silent without its socket closing (a cut network, a failover, a
    // slot that moved): this instance publishes probes to itself and, when one went unheard
    // for a whole instanceTtl, reconnects the subscriber (on a Cluster: resubscribes the
    // probe's partition).
    const channels = this.#probeChannels()
    await Promise.all(channels.map(async (channel, i) => {
      const probe = this.#probes[i]
      if (!this.#subscriberUp) return
      if (probe.seen < probe.sent && Date.now() - probe.sentAt > this.#settings.instanceTtl) {
        probe.seen = probe.sent
        if (this.#sharded) {
          await this.#restartPartition(slotOf(tagOf(channel))).catch(() => {})
          return
        }
        this.#subscriberUp = false
        this.#setConnected(false)
        conn.subscriber.disconnect(true)
        return
      }
      if (probe.seen >= probe.sent) {
        probe.sent++
        probe.sentAt = Date.now()
        await this.#publish(channel, JSON.stringify({ t: 'p', n: probe.sent, i })).catch(() => {})
      }
    }))
  }

  async #heartbeat (): Promise<void> {
    const { instanceId, connectionCount } = this.#ctx
    const ttl = this.#settings.instanceTtl
    const reply = await this.#script(scripts.heartbeat, [this.#members, this.#instancePrefix], [instanceId, connectionCount(), ttl, 10 * ttl]) as string[]
    const alive = new Set<string>()
    let connections = 0
    for (let i = 0; i < reply.length; i += 2) {
      alive.add(reply[i])
      connections += Number(reply[i + 1])
    }
    this.#alive = alive
    this.#cluster = { instances: alive.size, connections }
    this.#setConnected(this.#subscriberUp)
  }

  async #refreshHeld (): Promise<void> {
    const { instanceId, limits } = this.#ctx
    await Promise.all([...this.#held].map(async ([clientId, held]) => {
      const { since, saved } = held
      const keys = [this.#owner(clientId), this.#session(clientId)]
      const state = await this.#script(scripts.refresh, keys, [instanceId, presenceTtl, limits.retentionMs, saved === undefined ? '0' : '1', since])
      // Another instance claimed the client and its notice never arrived (published while this
      // instance's subscription was away): the connection here is the older one.
      if (Number(state) === 0 && this.#held.get(clientId) === held) {
        this.#held.delete(clientId)
        // Only the connection this refresh was for: a newer local one stays.
        this.#ctx.handlers.replaced(clientId, since)
        return
      }
      if (Number(state) === 2 && saved !== undefined && this.#held.get(clientId)?.saved === saved) {
        await this.#call(async (client) => await client.set(keys[1], saved, 'PX', limits.retentionMs, 'NX'))
      }
    }))
  }

  async #publishControl (instanceId: string, message: ControlMessage): Promise<number> {
    return await this.#publish(this.#control(instanceId), JSON.stringify(message))
  }

  async #publish (channel: string, text: string): Promise<number> {
    return await this.#call(async (client) => Number(this.#sharded ? await (client as Cluster).spublish(channel, text) : await client.publish(channel, text)))
  }

  cluster (): ClusterView | undefined {
    return this.#cluster
  }

  // ---- streams ----------------------------------------------------------------------------
  async publish (stream: string, message: StreamMessage): Promise<PublishResult> {
    const streams = this.#streams
    if (streams === undefined) throw new AdapterUnavailableError('the Redis adapter is not started')
    const { maxEntries, maxBytes, retentionMs } = this.#limits
    const { instanceId } = this.#ctx
    // A publish to a stream being subscribed waits for the subscription, so its own entry comes back.
    await this.#within(streams.whenActive(stream))
    const info = JSON.stringify([message.binary ? 1 : 0, instanceId, message.exclude ?? null])
    const reply = await this.#script(scripts.publish, [this.#meta(stream), this.#log(stream)], [
      newEpoch(), maxEntries, maxBytes, retentionMs, this.#metaTtl, message.payload, info,
      this.#channel(stream), this.#sharded ? 'SPUBLISH' : 'PUBLISH'
    ]) as [string, number, number]
    const [epoch, seq, ts] = [String(reply[0]), Number(reply[1]), Number(reply[2])]
    const position = { epoch, seq }
    if (!streams.has(stream)) return { position, local: undefined }
    const entry: StreamEntry = { stream, epoch, seq, ts, origin: instanceId, payload: message.payload, binary: message.binary, ...(message.exclude === undefined ? {} : { exclude: message.exclude }) }
    return { position, local: await streams.delivered(entry) }
  }

  async #within<T> (promise: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    try {
      return await Promise.race([promise, new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => { reject(new AdapterUnavailableError(`the subscription at ${this.#conn.address} did not come up within ${this.#settings.commandTimeout} ms`)) }, this.#settings.commandTimeout)
        timer.unref()
      })])
    } finally {
      clearTimeout(timer)
    }
  }

  subscribe (stream: string): void {
    this.#streams?.subscribe(stream)
  }

  unsubscribe (stream: string): void {
    this.#streams?.unsubscribe(stream)
  }

  async top (stream: string): Promise<StreamPosition> {
    const delivered = this.#streams === undefined ? undefined : await this.#within(this.#streams.position(stream))
    return delivered ?? await this.#top(stream)
  }

  async #start (stream: string, since: number): Promise<StreamStart> {
    const reply = await this.#script(scripts.start, [this.#meta(stream), this.#log(stream)], [newEpoch(), this.#metaTtl, since]) as unknown[]
    return { top: { epoch: String(reply[0]), seq: Number(reply[1]) }, before: Number(reply[2]) }
  }

  async #top (stream: string): Promise<StreamPosition> {
    const reply = await this.#script(scripts.read, [this.#meta(stream), this.#log(stream)], [newEpoch(), this.#metaTtl, '', 0, 0, 0, 0, 0]) as unknown[]
    return { epoch: String(reply[0]), seq: Number(reply[1]) }
  }

  async read (stream: string, after: StreamPosition | undefined, limit: number): Promise<StreamRead> {
    if (this.#streams !== undefined) await this.#within(this.#streams.whenActive(stream))
    if (limit >= 1) return await this.#read(stream, after, limit)
    const { top, missed } = await this.#read(stream, after, 1)
    return { top, entries: [], missed }
  }

  async #read (stream: string, after: StreamPosition | undefined, limit: number): Promise<StreamRead> {
    const { maxEntries, maxBytes, retentionMs } = this.#limits
    const reply = await this.#script(scripts.read, [this.#meta(stream), this.#log(stream)], [
      newEpoch(), this.#metaTtl, after?.epoch ?? '', after?.seq ?? 0, Math.max(1, Math.floor(limit)), maxEntries, maxBytes, retentionMs
    ], true) as Array<Buffer | number | Buffer[]>
    const epoch = String(reply[0])
    const entries: StreamEntry[] = []
    for (let i = 3; i < reply.length; i += 2) {
      const id = String(reply[i])
      const fields = reply[i + 1] as Buffer[]
      entries.push(entryOf(stream, epoch, Number(id.slice(0, id.indexOf('-'))), Number(String(fields[5])), String(fields[3]), fields[1]))
    }
    return { top: { epoch, seq: Number(reply[1]) }, entries, missed: Number(reply[2]) }
  }

  // ---- presence ---------------------------------------------------------------------------
  async claim (clientId: string, since = Date.now()): Promise<boolean> {
    const { instanceId } = this.#ctx
    since = Math.floor(since)
    // Held from before the call: a release while the claim is in flight removes it for good.
    const before = this.#held.get(clientId)
    const held = before === undefined || before.since <= since ? { since, saved: before?.saved } : undefined
    if (held !== undefined) this.#held.set(clientId, held)
    // A claim that fails (Redis away) stays held: the presence refresh writes it once Redis is back.
    const [claimed, previous] = await this.#script(scripts.claim, [this.#owner(clientId)], [instanceId, since, presenceTtl]) as [number, string]
    if (Number(claimed) !== 1) {
      if (held !== undefined && this.#held.get(clientId) === held) this.#held.delete(clientId)
      return false
    }
    if (previous !== '' && previous !== instanceId) await this.#publishControl(previous, { t: 'r', c: clientId, s: since })
    return true
  }

  async release (clientId: string): Promise<void> {
    this.#held.delete(clientId)
    await this.#script(scripts.release, [this.#owner(clientId), this.#session(clientId)], [this.#ctx.instanceId, this.#limits.retentionMs])
  }

  /** The instance holding `clientId`, if it is alive. */
  async #holder (clientId: string): Promise<string | undefined> {
    const value = await this.#call(async (client) => await client.get(this.#owner(clientId)))
    if (value === null) return undefined
    const at = value.lastIndexOf('@')
    const owner = at < 0 ? value : value.slice(0, at)
    if (owner === this.#ctx.instanceId || this.#alive.has(owner)) return owner
    // An instance that started since the last heartbeat is not in the view yet.
    const alive = await this.#call(async (client) => await client.exists(this.#instancePrefix + owner))
    return alive === 1 ? owner : undefined
  }

  async locate (clientId: string): Promise<'connected' | 'retained' | undefined> {
    const [holder, retained] = await Promise.all([
      this.#holder(clientId),
      this.#call(async (client) => await client.exists(this.#session(clientId)))
    ])
    if (holder !== undefined) return 'connected'
    return retained === 1 ? 'retained' : undefined
  }

  async disconnect (clientId: string, code: number, reason: string): Promise<boolean> {
    const holder = await this.#holder(clientId)
    if (holder === undefined) return false
    if (holder === this.#ctx.instanceId) {
      this.#ctx.handlers.disconnect(clientId, code, reason)
      return true
    }
    return await this.#publishControl(holder, { t: 'd', c: clientId, code, reason }) > 0
  }

  // ---- sessions ---------------------------------------------------------------------------
  async saveSession (record: SessionRecord): Promise<void> {
    const { clientId } = record
    const value = `${Buffer.byteLength(record.sessionId)}:${record.sessionId}${JSON.stringify(record)}`
    // A client's records are written in the order they were made, whatever queue ioredis (a
    // Cluster's offline queue, a slot refresh) holds one in: the last one made is what stays.
    const previous = this.#saving.get(clientId)
    const write = (async () => {
      await previous?.catch(() => {})
      await this.#call(async (client) => await client.set(this.#session(clientId), value, 'PX', this.#limits.retentionMs))
      const held = this.#held.get(clientId)
      if (held !== undefined) held.saved = value
    })()
    this.#saving.set(clientId, write)
    try {
      await write
    } finally {
      if (this.#saving.get(clientId) === write) this.#saving.delete(clientId)
    }
  }

  async takeSession (clientId: string, sessionId: string): Promise<SessionRecord | undefined> {
    const value = await this.#script(scripts.takeSession, [this.#session(clientId)], [sessionId]) as string | null
    if (value === null) return undefined
    const held = this.#held.get(clientId)
    if (held !== undefined) held.saved = undefined // taken: never written again
    return JSON.parse(value.slice(`${Buffer.byteLength(sessionId)}:${sessionId}`.length)) as SessionRecord
  }

  async dropSession (clientId: string, sessionId: string): Promise<void> {
    await this.#script(scripts.dropSession, [this.#session(clientId)], [sessionId])
    const held = this.#held.get(clientId)
    if (held?.saved?.startsWith(`${Buffer.byteLength(sessionId)}:${sessionId}`) === true) held.saved = undefined
  }

  // ---- tokens -----------------------------------------------------------------------------
  async redeemToken (tokenId: string, expiresAt: number): Promise<boolean> {
    // Kept at least a second, so that a token redeemed at its expiry still cannot be redeemed twice.
    const until = Math.max(Math.ceil(expiresAt), Date.now() + 1000)
    const reply = await this.#call(async (client) => await client.set(this.#token(tokenId), '1', 'PXAT', until, 'NX'))
    return reply === 'OK'
  }
}

export type { RedisClusterSource, RedisSource } from './redis-connection.js'

/** The hash tag of a key or channel (what is between its first braces). */
function tagOf (name: string): string {
  const open = name.indexOf('{')
  const close = name.indexOf('}', open + 1)
  return open < 0 || close < 0 ? name : name.slice(open + 1, close)
}

function bySlot (channels: string[]): Map<number, string[]> {
  const batches = new Map<number, string[]>()
  for (const channel of channels) {
    const slot = slotOf(tagOf(channel))
    const batch = batches.get(slot)
    if (batch === undefined) batches.set(slot, [channel])
    else batch.push(channel)
  }
  return batches
}
