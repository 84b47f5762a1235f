/**
 * The Redis adapter's connections: the command client (the user's own, or one made from a
 * URL or options), its duplicate for subscriptions, readiness, and the deadline on every call.
 */
import type { Cluster, ClusterNode, ClusterOptions, Redis, RedisOptions } from 'ioredis'
import { AdapterUnavailableError } from '../errors.js'

export type RedisClient = Redis | Cluster

/** A Redis Cluster for the adapter to connect to itself: its startup nodes and ioredis cluster options. */
export interface RedisClusterSource {
  cluster: ClusterNode[]
  options?: ClusterOptions
}

/** What `redisAdapter({ redis })` accepts. */
export type RedisSource = string | RedisOptions | RedisClient | RedisClusterSource

function isClusterSource (source: RedisSource): source is RedisClusterSource {
  return typeof source === 'object' && source !== null && Array.isArray((source as RedisClusterSource).cluster)
}

export function isClient (source: RedisSource): source is RedisClient {
  return typeof source === 'object' && source !== null && typeof (source as Redis).duplicate === 'function' &&
    typeof (source as Redis).call === 'function'
}

// Options of the connections the adapter makes: it never queues a command while Redis is
// away (a publish queued offline would be delivered long after it was reported as failed),
// never resends one after a reconnect, and reconnects with a capped backoff.
const ownOptions: RedisOptions = {
  lazyConnect: true,
  enableOfflineQueue: false,
  autoResendUnfulfilledCommands: false,
  maxRetriesPerRequest: 0,
  retryStrategy: (times: number) => Math.min(times * 100, 1000)
}

// The subscriber resubscribes itself (the adapter must know when a subscription is back, to
// read what it missed), so ioredis's own resubscription is off.
const subscriberOptions: RedisOptions = { ...ownOptions, autoResubscribe: false, connectionName: 'fws-subscriber' }

export interface Connections {
  readonly commands: RedisClient
  readonly subscriber: RedisClient
  /** Whether `commands` was made here (and is closed by `close()`). */
  readonly ownsCommands: boolean
  /** Where Redis is, for error messages (no password). */
  readonly address: string
}

/** Makes (or adopts) the command client and makes the subscriber; connects neither. */
export async function openConnections (source: RedisSource, connectTimeout: number): Promise<Connections> {
  if (isClient(source)) {
    const subscriber = source.isCluster
      // ioredis's sharded subscribers: one connection per master, SSUBSCRIBE routed by slot.
      ? (source as Cluster).duplicate([], { enableOfflineQueue: false, lazyConnect: true, shardedSubscribers: true })
      : (source as Redis).duplicate({ ...subscriberOptions, connectTimeout })
    return { commands: source, subscriber, ownsCommands: false, address: describe(source) }
  }
  if (isClusterSource(source)) {
    const { Cluster } = await import('ioredis')
    const options = source.options ?? {}
    const commands = new Cluster(source.cluster, {
      ...options,
      lazyConnect: true,
      enableOfflineQueue: false,
      // The node connections never queue or resend a command either (see ownOptions).
      redisOptions: { connectTimeout, ...options.redisOptions, autoResendUnfulfilledCommands: false, maxRetriesPerRequest: 0 }
    })
    const subscriber = commands.duplicate([], { shardedSubscribers: true })
    return { commands, subscriber, ownsCommands: true, address: describe(commands) }
  }
  const { Redis } = await import('ioredis')
  const commands = typeof source === 'string'
    ? new Redis(source, { ...ownOptions, connectTimeout })
    : new Redis({ connectTimeout, ...source, ...ownOptions, retryStrategy: source.retryStrategy ?? ownOptions.retryStrategy })
  const subscriber = commands.duplicate({ ...subscriberOptions, connectTimeout, retryStrategy: commands.options.retryStrategy })
  return { commands, subscriber, ownsCommands: true, address: describe(commands) }
}

/** host:port of a client, or of a cluster's first startup node. */
export function describe (client: RedisClient): string {
  if (client.isCluster) {
    const nodes = (client as unknown as { startupNodes?: Array<{ host?: string, port?: number } | string | number> }).startupNodes ?? []
    const first = nodes[0]
    return `the cluster at ${typeof first === 'object' ? `${first.host ?? '127.0.0.1'}:${first.port ?? 6379}` : String(first ?? '?')}`
  }
  const options = (client as Redis).options
  return options.path ?? `${options.host ?? '127.0.0.1'}:${options.port ?? 6379}`
}

/** Connects `client` if it is lazy, and waits until it is ready, or rejects after `ms`. */
export async function waitReady (client: RedisClient, ms: number, address: string, lastError: () => Error | undefined): Promise<void> {
  if (client.status === 'ready') return
  if (client.status === 'wait') client.connect().catch(() => {}) // failures arrive as 'error' events
  await new Promise<void>((resolve, reject) => {
    const settle = (err?: Error): void => {
      clearTimeout(timer)
      client.off('ready', onReady)
      client.off('end', onEnd)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onReady = (): void => { settle() }
    const onEnd = (): void => { settle(unavailable(address, lastError())) }
    const timer = setTimeout(() => { settle(unavailable(address, lastError(), ms)) }, ms)
    timer.unref()
    client.on('ready', onReady)
    client.on('end', onEnd)
  })
}

function unavailable (address: string, cause: Error | undefined, ms?: number): Error {
  const why = cause === undefined ? 'no answer' : cause.message
  return new AdapterUnavailableError(`Redis at ${address} is not reachable${ms === undefined ? '' : ` within ${ms} ms`} (${why})`)
}

/**
 * Runs one call against Redis within `ms`: rejects at once when the client is not connected
 * (nothing is queued), and with `AdapterUnavailableError` when no answer came in time.
 */
export async function bounded<T> (client: RedisClient, ms: number, address: string, call: () => Promise<T>): Promise<T> {
  if (client.status !== 'ready') {
    throw new AdapterUnavailableError(`Redis at ${address} is not connected (${client.status})`)
  }
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => { reject(new AdapterUnavailableError(`Redis at ${address} did not answer within ${ms} ms`)) }, ms)
    timer.unref()
  })
  try {
    return await Promise.race([call(), deadline])
  } catch (err) {
    if (err instanceof AdapterUnavailableError) throw err
    const message = (err as Error).message ?? String(err)
    // A connection lost mid-call is the store being away, not a bug in the call.
    if (/Connection is closed|Stream isn.t writeable|max retries per request|ECONNRE|EPIPE|ETIMEDOUT/i.test(message)) {
      throw new AdapterUnavailableError(`Redis at ${address}: ${message}`)
    }
    throw err
  } finally {
    clearTimeout(timer)
  }
}

/** Closes a connection the adapter made: QUIT, then a hard disconnect if QUIT does not finish within `ms`. */
export async function closeConnection (client: RedisClient, ms: number): Promise<void> {
  if (client.status === 'end') return
  if (client.status !== 'ready') {
    client.disconnect()
    return
  }
  let timer: NodeJS.Timeout | undefined
  await Promise.race([
    client.quit().catch(() => {}),
    new Promise<void>((resolve) => { timer = setTimeout(resolve, ms); timer.unref() })
  ])
  clearTimeout(timer)
  if ((client.status as string) !== 'end') client.disconnect()
}

export type { ClusterOptions }
