/** The options: their TypeBox schema, defaults and the checks that fail `register` with a coded error. */
import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import type { FastifyRequest, RouteShorthandOptions } from 'fastify'
import { InvalidOptionError } from './errors.js'
import { allowedValues, belowMinimum, nearestName } from './option-messages.js'
import { CompressionSchema, compressionConflict, type Compression } from './compression.js'
import type { StabilizedConnection } from './connection.js'
import type { ReplayOutcome } from './protocol.js'
import type { StabilizerAdapter } from './adapter/adapter.js'

const Milliseconds = (description: string) => Type.Integer({ minimum: 0, description })
const Count = (description: string) => Type.Integer({ minimum: 1, description })
const RoutePath = Type.String({ pattern: '^/', minLength: 1 })
const Buckets = (description: string) => Type.Array(Type.Number({ minimum: 0 }), { minItems: 1, maxItems: 64, description: `${description}: increasing upper bounds` })

/** The `metrics` option when it is an object (`true` means all of its defaults). */
export const MetricsOptionsSchema = Type.Object({
  prefix: Type.Optional(Type.String({ pattern: '^([a-zA-Z_:][a-zA-Z0-9_:]*)?$', description: 'Prefix of every series name (letters, digits, _ and :, not starting with a digit).' })),
  registry: Type.Optional(Type.Object({}, { description: 'A prom-client Registry to register the series in (default: one of this app\'s own).' })),
  route: Type.Optional(Type.Union([
    RoutePath,
    Type.Literal(false),
    Type.Object({ path: Type.Optional(RoutePath) }, { additionalProperties: true })
  ], { description: 'Path of GET /metrics, false to serve none, or Fastify route options (onRequest, preHandler, config, logLevel…) with an optional `path`.' })),
  buckets: Type.Optional(Type.Object({
    heartbeatRtt: Type.Optional(Buckets('Heartbeat round-trip seconds')),
    connectionDuration: Type.Optional(Buckets('Connection lifetime seconds')),
    broadcastDuration: Type.Optional(Buckets('Broadcast seconds')),
    adapterPublish: Type.Optional(Buckets('Adapter publish seconds'))
  }, { additionalProperties: false, description: 'Histogram bucket bounds, by histogram.' })),
  groups: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { maxItems: 100, description: 'Group names whose member count is exported with a `group` label; no other group name ever becomes a label.' }))
}, { additionalProperties: false })

/**
 * The options schema: flat, camelCase, times in milliseconds. Every key is validated at
 * register time; an unknown key or a bad value fails `register` with
 * `FST_WS_STABILIZER_INVALID_OPTION` naming the option.
 */
export const OptionsSchema = Type.Object({
  enableReconnect: Type.Optional(Type.Boolean({ description: 'Issue and accept reconnect tokens.' })),
  secrets: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'Reconnect-token keys, each at least 32 bytes: the first signs, all verify (rotation). Share them between instances.' })),
  reconnectTokenTtl: Type.Optional(Type.Integer({ minimum: 1000, description: 'Lifetime of a reconnect token in ms.' })),
  resumeWindow: Type.Optional(Milliseconds('How long the state of a session whose connection was lost is kept for its client to resume.')),
  maxRetainedSessions: Type.Optional(Type.Integer({ minimum: 0, description: 'Sessions retained at once; past it the oldest is dropped.' })),
  replayBufferSize: Type.Optional(Type.Integer({ minimum: 0, description: 'Messages kept per stream (everyone, each group, each client) for replay to resuming `stabilizer.v1` clients (the most recent); 0 = no replay.' })),
  replayBufferBytes: Type.Optional(Type.Integer({ minimum: 0, description: 'Bytes kept per stream for replay (payloads plus 160 bytes per message); past it the oldest go.' })),
  reconnectTokenRoute: Type.Optional(Type.Union([RoutePath, Type.Literal(false)], { description: 'Path of POST /reconnect-token, or false to not register it.' })),
  tokenRequestsPerMinute: Type.Optional(Count('Reconnect-token requests per minute allowed per client id on the route.')),
  onResume: Type.Optional(Type.Function([Type.Any(), Type.Any()], Type.Any(), { description: 'Called when a client resumes its session with a token.' })),
  heartbeatInterval: Type.Optional(Milliseconds('Time between heartbeats, at least 100 ms; 0 turns heartbeats off.')),
  heartbeatTimeout: Type.Optional(Milliseconds('How long a heartbeat may stay unanswered before the peer is terminated, at least 50 ms; 0 = keepalive only, never terminate.')),
  heartbeatType: Type.Optional(Type.Union([Type.Literal('ping'), Type.Literal('custom')], { description: '\'ping\' (protocol ping frames) or \'custom\' (application messages).' })),
  anyMessageIsAlive: Type.Optional(Type.Boolean({ description: 'Any inbound message or ping counts as an answer to the pending heartbeat.' })),
  customPing: Type.Optional(Type.Function([Type.Number()], Type.String(), { description: 'heartbeatType \'custom\': builds the ping message from Date.now().' })),
  isCustomPong: Type.Optional(Type.Function([Type.Any(), Type.Boolean()], Type.Boolean(), { description: 'heartbeatType \'custom\': recognises a pong among inbound messages.' })),
  maxMemoryPerConnection: Type.Optional(Type.Integer({ minimum: 0, description: 'Bytes of user data one connection may hold; 0 = no limit.' })),
  maxTotalMemory: Type.Optional(Type.Integer({ minimum: 0, description: 'Bytes of user data all connections may hold together; 0 = no limit. Past it, connections are evicted.' })),
  memoryEvictionPolicy: Type.Optional(Type.Union([Type.Literal('lru'), Type.Literal('oldest'), Type.Literal('largest')], { description: 'Who is evicted past maxTotalMemory: least recently active, earliest connected, or biggest holder.' })),
  inboundMessageRate: Type.Optional(Type.Integer({ minimum: 0, description: 'Messages per second one connection may send (token bucket holding one second); 0 = no limit.' })),
  inboundByteRate: Type.Optional(Type.Integer({ minimum: 0, description: 'Bytes per second one connection may send (token bucket holding one second); 0 = no limit.' })),
  rateLimitPolicy: Type.Optional(Type.Union([Type.Literal('close'), Type.Literal('drop')], { description: 'A connection over its inbound rate is closed with 1008, or its excess messages are dropped before any handler sees them.' })),
  maxBufferedAmount: Type.Optional(Type.Integer({ minimum: 0, description: 'Outbound bytes one connection may have waiting to be sent; past it, slowConsumerPolicy applies. 0 = no limit.' })),
  slowConsumerPolicy: Type.Optional(Type.Union([Type.Literal('disconnect'), Type.Literal('drop')], { description: 'A connection past maxBufferedAmount is closed with 4002, or gets no new message until it catches up.' })),
  maxConnections: Type.Optional(Count('Open connections allowed at once; further upgrades get HTTP 503 with Retry-After.')),
  maxConnectionsPerIp: Type.Optional(Type.Integer({ minimum: 0, description: 'Open connections allowed per client IP (request.ip: trustProxy applies); further upgrades get HTTP 429. 0 = no limit.' })),
  connectRatePerIp: Type.Optional(Type.Integer({ minimum: 0, description: 'Upgrades per second allowed per client IP (token bucket holding one second); further ones get HTTP 429 with Retry-After. 0 = no limit.' })),
  allowedOrigins: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { description: 'Origins allowed to open a websocket (exact match, e.g. https://app.example.com); other origins get HTTP 403. Requests without an Origin header (non-browser clients) are allowed.' })),
  maxMessageSize: Type.Optional(Count('Largest inbound message in bytes (`ws` maxPayload); larger ones close the socket with 1009.')),
  compression: Type.Optional(Type.Union([Type.Boolean(), CompressionSchema], { description: 'Negotiate permessage-deflate: true (ws\'s defaults, compressed per socket), or { strategy, threshold, level, memLevel, serverMaxWindowBits, serverNoContextTakeover }.' })),
  maxConcurrentBroadcast: Type.Optional(Count('Sends a broadcast performs per event-loop turn before yielding.')),
  maxConcurrentCleanup: Type.Optional(Count('Closes started per event-loop turn during shutdown and mass evictions.')),
  closeTimeout: Type.Optional(Count('How long a server-initiated close waits for the peer\'s close frame before terminate(), at least 100 ms.')),
  shutdownTimeout: Type.Optional(Milliseconds('Deadline of a graceful shutdown; sockets still open then are terminated.')),
  shutdownCloseCode: Type.Optional(Type.Union([Type.Literal(1012), Type.Literal(1001)], { description: 'Close code sent to every client at shutdown: 1012 or 1001.' })),
  shutdownReleasePort: Type.Optional(Type.Boolean({ description: 'app.close() stops accepting TCP connections before the drain (not after), so a replacement can take the port while old sockets drain.' })),
  shutdownRetryDelay: Type.Optional(Milliseconds('Least reconnect delay hinted to each client at shutdown: at least the time a replacement needs to accept connections.')),
  shutdownRetrySpread: Type.Optional(Milliseconds('Width of the random part of the reconnect delay hinted at shutdown: each hint is in [shutdownRetryDelay, shutdownRetryDelay + shutdownRetrySpread].')),
  identify: Type.Optional(Type.Function([Type.Any()], Type.Any(), { description: 'Returns the client id of an upgrade request (sync or async); may throw 401/403.' })),
  onConnect: Type.Optional(Type.Function([Type.Any()], Type.Any(), { description: 'Called after a connection is registered.' })),
  onDisconnect: Type.Optional(Type.Function([Type.Any(), Type.Any(), Type.Any()], Type.Any(), { description: 'Called once when a connection has closed.' })),
  statsRoute: Type.Optional(Type.Union([RoutePath, Type.Literal(false)], { description: 'Path of the stats route, or false to not register it.' })),
  statsIncludeClientIds: Type.Optional(Type.Boolean({ description: 'List client ids in the stats route (they can be personal data).' })),
  adapter: Type.Optional(Type.Object({}, { additionalProperties: true, description: 'Where what other instances must see is kept: the in-process MemoryAdapter (default) or redisAdapter() from fastify-websocket-stabilizer/redis.' })),
  metrics: Type.Optional(Type.Union([Type.Boolean(), MetricsOptionsSchema], { description: 'Prometheus metrics (needs prom-client): true, or { prefix, registry, route, buckets, groups }.' })),
  logLevel: Type.Optional(Type.Union([
    Type.Literal('fatal'), Type.Literal('error'), Type.Literal('warn'), Type.Literal('info'),
    Type.Literal('debug'), Type.Literal('trace'), Type.Literal('silent')
  ], { description: 'Log level of the plugin\'s own logger.' }))
}, { additionalProperties: false })

type SchemaOptions = Static<typeof OptionsSchema>

/** The user-facing options, with the function options typed precisely. */
/** What `onResume` learns about a resume. */
export interface ResumeInfo {
  /** The session the token named (the connection continues it). */
  sessionId: string
  /** Whether the session's user data and groups were restored (false: the window had passed, or the session ended on purpose). */
  stateRestored: boolean
  /**
   * What the client got back of the messages it missed (`stabilizer.v1` clients that said
   * where they stood): `full`, `partial` (`missed` messages are lost, or `historyLost`), or
   * `none` (a plain client, or no positions offered).
   */
  replay: ReplayOutcome
  /** Messages sent again. */
  replayed: number
  /** Messages the client missed and could not be sent again, when their number is known. */
  missed: number
  /** Whether the history of one of its streams was lost (a restart): an unknown number of messages were missed. */
  historyLost: boolean
}

/** The registry methods the stabilizer uses: any prom-client `Registry` has them. */
export interface MetricsRegistry {
  registerMetric: (metric: any) => void
  getSingleMetric: (name: string) => unknown
  removeSingleMetric: (name: string) => void
  metrics: () => Promise<string>
  readonly contentType: string
}

/** Fastify route options of `GET /metrics` (hooks to protect it, config, logLevel…), with its path. */
export interface MetricsRouteOptions extends Omit<RouteShorthandOptions, 'websocket'> {
  /** Default `/metrics`. */
  path?: string
}

/** Histogram bucket upper bounds, in the histogram's unit (seconds). */
export interface MetricsBuckets {
  /** `heartbeat_rtt_seconds`. Default 0.1 ms … 10 s. */
  heartbeatRtt: readonly number[]
  /** `connection_duration_seconds`. Default 1 s … 1 day. */
  connectionDuration: readonly number[]
  /** `broadcast_duration_seconds`. Default 0.1 ms … 10 s. */
  broadcastDuration: readonly number[]
  /** `adapter_publish_duration_seconds`. Default 0.5 ms … 5 s. */
  adapterPublish: readonly number[]
}

export interface MetricsOptions {
  /** Prefix of every series name. Default `websocket_stabilizer_`. */
  prefix?: string
  /**
   * The prom-client Registry the series are registered in. Default: a registry of this app's
   * own (served by its `GET /metrics`); with fastify-metrics registered first, its registry.
   */
  registry?: MetricsRegistry
  /**
   * `GET /metrics`: its path, `false` for none, or route options (e.g. an `onRequest` hook
   * that checks a bearer token). Default `/metrics`; none when fastify-metrics serves them.
   */
  route?: string | false | MetricsRouteOptions
  /** Histogram buckets, by histogram (defaults in `metricsDefaults.buckets`). */
  buckets?: Partial<MetricsBuckets>
  /** Groups whose member count is exported with a `group` label (group names are otherwise never labels). Default none. */
  groups?: readonly string[]
}

/** The `metrics` option once resolved; `route` is undefined when it was not given. */
export interface ResolvedMetricsOptions {
  prefix: string
  registry: MetricsRegistry | undefined
  route: string | false | MetricsRouteOptions | undefined
  buckets: MetricsBuckets
  groups: readonly string[]
}

/** Defaults of `metrics: true`. */
export const metricsDefaults = {
  prefix: 'websocket_stabilizer_',
  route: '/metrics',
  buckets: {
    heartbeatRtt: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    connectionDuration: [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400],
    broadcastDuration: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    adapterPublish: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
  } satisfies MetricsBuckets
} as const

export interface StabilizerOptions extends Omit<SchemaOptions, 'identify' | 'onConnect' | 'onDisconnect' | 'onResume' | 'customPing' | 'isCustomPong' | 'metrics' | 'adapter'> {
  /**
   * Where what other instances must see is kept (broadcast streams and their logs, presence,
   * retained sessions, redeemed tokens). Default: a `MemoryAdapter` of this process. Use
   * `redisAdapter()` from `fastify-websocket-stabilizer/redis` to run several instances as one.
   */
  adapter?: StabilizerAdapter
  /**
   * Prometheus metrics (prom-client must be installed): `true`, or an object to set the
   * prefix, registry, route, buckets and exported groups. Default `false`.
   */
  metrics?: boolean | MetricsOptions
  /** Called when a client came back with a reconnect token (after `onConnect`). Errors are logged. */
  onResume?: (connection: StabilizedConnection, info: ResumeInfo) => void | Promise<void>
  /** `heartbeatType: 'custom'`: the ping message. Default `{"type":"ping","ts":<Date.now()>}`. */
  customPing?: (timestamp: number) => string
  /**
   * `heartbeatType: 'custom'`: whether an inbound message is a pong (it is then hidden from
   * the route's handlers). Default: the text `pong`, or a JSON object with `"type": "pong"`.
   */
  isCustomPong?: (data: Buffer, isBinary: boolean) => boolean
  /**
   * Resolves the client id of an upgrade request before the upgrade. Sync or async. Throw an
   * error with `statusCode` 401 or 403 to refuse. Default: the `clientId` route param when
   * the route has one, else a random id (22 URL-safe characters).
   */
  identify?: (request: FastifyRequest) => string | Promise<string>
  /** Called after a connection is registered, before the route handler runs. Errors are logged. */
  onConnect?: (connection: StabilizedConnection) => void | Promise<void>
  /**
   * Called once per connection after its socket closed and its slot was freed. `code` and
   * `reason` are those of the close (1006 and the cause name for a terminated socket).
   */
  onDisconnect?: (connection: StabilizedConnection, code: number, reason: string) => void | Promise<void>
}

/** Defaults of every option that has one. The README's option table mirrors this object. */
export const defaults = {
  enableReconnect: true,
  reconnectTokenTtl: 300_000,
  resumeWindow: 120_000,
  maxRetainedSessions: 10_000,
  replayBufferSize: 1_000,
  replayBufferBytes: 262_144,
  reconnectTokenRoute: '/reconnect-token' as string | false,
  tokenRequestsPerMinute: 10,
  inboundMessageRate: 0,
  inboundByteRate: 0,
  rateLimitPolicy: 'close' as 'close' | 'drop',
  maxBufferedAmount: 1_048_576,
  slowConsumerPolicy: 'disconnect' as 'disconnect' | 'drop',
  maxMemoryPerConnection: 0,
  maxTotalMemory: 0,
  memoryEvictionPolicy: 'lru' as 'lru' | 'oldest' | 'largest',
  heartbeatInterval: 25_000,
  heartbeatTimeout: 10_000,
  heartbeatType: 'ping' as 'ping' | 'custom',
  anyMessageIsAlive: true,
  maxConnections: 10_000,
  maxConnectionsPerIp: 0,
  connectRatePerIp: 0,
  maxMessageSize: 1_048_576,
  compression: false as Compression,
  maxConcurrentBroadcast: 1_000,
  maxConcurrentCleanup: 1_000,
  closeTimeout: 5_000,
  shutdownTimeout: 10_000,
  shutdownCloseCode: 1012 as 1012 | 1001,
  shutdownReleasePort: true,
  shutdownRetryDelay: 250,
  shutdownRetrySpread: 2_750,
  statsRoute: '/ws-stats' as string | false,
  statsIncludeClientIds: false,
  metrics: false as false | ResolvedMetricsOptions
}

export type ResolvedOptions = typeof defaults & Pick<StabilizerOptions, 'identify' | 'onConnect' | 'onDisconnect' | 'onResume' | 'logLevel' | 'allowedOrigins' | 'secrets' | 'adapter'> & {
  customPing: (timestamp: number) => string
  isCustomPong: (data: Buffer, isBinary: boolean) => boolean
}

/** The default application-level ping: a small JSON message carrying a timestamp. */
export function defaultCustomPing (timestamp: number): string {
  return `{"type":"ping","ts":${timestamp}}`
}

/** The default pong test: the text `pong`, or a small JSON object whose type is "pong". */
export function defaultIsCustomPong (data: Buffer, isBinary: boolean): boolean {
  if (isBinary || data.length > 64) return false
  const text = data.toString()
  if (text === 'pong') return true
  if (text.charCodeAt(0) !== 123 /* { */) return false
  try {
    return (JSON.parse(text) as { type?: unknown }).type === 'pong'
  } catch {
    return false
  }
}

/** What a schema error says about option `name`: the allowed values, or the option it was probably meant to be. */
function describeError (name: string, message: string, schema: TSchema): string {
  if (message === 'Unexpected property') {
    const nearest = nearestName(name, Object.keys(OptionsSchema.properties))
    return nearest === undefined ? 'unknown option' : `unknown option (did you mean "${nearest}"?)`
  }
  const allowed = allowedValues(schema)
  if (allowed !== undefined) return `must be one of ${allowed.join(', ')}`
  return `${message}${typeof schema.description === 'string' ? ` (${schema.description})` : ''}`
}

/** What an `adapter` option must implement (see lib/adapter/adapter.ts). */
const adapterMethods = ['start', 'stop', 'publish', 'subscribe', 'unsubscribe', 'top', 'read', 'claim', 'release', 'locate', 'disconnect', 'cluster', 'saveSession', 'takeSession', 'dropSession', 'redeemToken'] as const

/**
 * The object form of `compression`, checked on its own so that an error names the key
 * (`compression.level`) instead of the union's "expected boolean or object".
 */
function checkCompression (compression: unknown): void {
  if (typeof compression !== 'object' || compression === null || Array.isArray(compression)) return
  const error = Value.Errors(CompressionSchema, compression).First()
  if (error !== undefined) {
    const key = error.path.replace(/^\//, '')
    const detail = error.message === 'Unexpected property'
      ? 'unknown option (known: strategy, threshold, level, memLevel, serverMaxWindowBits, serverNoContextTakeover)'
      : `${error.message}${typeof error.schema.description === 'string' ? ` (${error.schema.description})` : ''}`
    throw new InvalidOptionError(key === '' ? 'compression' : `compression.${key}`, detail)
  }
  const conflict = compressionConflict(compression as Static<typeof CompressionSchema>)
  if (conflict !== undefined) throw new InvalidOptionError(`compression.${conflict[0]}`, conflict[1])
}

/**
 * Validates `input` against the schema and fills in defaults.
 * @throws InvalidOptionError naming the first offending option.
 */
export function resolveOptions (input: unknown): ResolvedOptions {
  const options = input ?? {}
  // An object `metrics` is checked on its own: a union's error would not say which key is wrong.
  const metrics = (options as { metrics?: unknown }).metrics
  if (typeof metrics === 'object' && metrics !== null) assertValid(MetricsOptionsSchema, metrics, 'metrics.')
  checkCompression((options as { compression?: unknown }).compression)
  const error = Value.Errors(OptionsSchema, options).First()
  if (error !== undefined) {
    const name = error.path.replace(/^\//, '').replace(/\//g, '.') || '(options)'
    throw new InvalidOptionError(name, describeError(name, error.message, error.schema))
  }
  const adapter = (options as { adapter?: Record<string, unknown> }).adapter
  if (adapter !== undefined && !adapterMethods.every((method) => typeof adapter[method] === 'function')) {
    throw new InvalidOptionError('adapter', `expected a StabilizerAdapter (a MemoryAdapter, or redisAdapter() from fastify-websocket-stabilizer/redis) with the methods ${adapterMethods.join(', ')}`)
  }
  const given = Object.fromEntries(Object.entries(options as object).filter(([, value]) => value !== undefined)) as Partial<ResolvedOptions>
  const resolved = { ...defaults, customPing: defaultCustomPing, isCustomPong: defaultIsCustomPong, ...given } as ResolvedOptions
  for (const name of ['heartbeatInterval', 'heartbeatTimeout', 'closeTimeout'] as const) {
    const reason = belowMinimum(name, given[name])
    if (reason !== undefined) throw new InvalidOptionError(name, reason)
  }
  if (resolved.heartbeatInterval === 0 && given.heartbeatTimeout !== undefined) {
    throw new InvalidOptionError('heartbeatTimeout', 'has no effect when heartbeatInterval is 0 (heartbeats off)')
  }
  if (given.memoryEvictionPolicy !== undefined && resolved.maxTotalMemory === 0) {
    throw new InvalidOptionError('memoryEvictionPolicy', 'has no effect without maxTotalMemory')
  }
  for (const [index, secret] of (resolved.secrets ?? []).entries()) {
    if (Buffer.byteLength(secret) < 32) throw new InvalidOptionError(`secrets.${index}`, 'a secret must be at least 32 bytes (e.g. 32 random bytes, base64)')
  }
  if (!resolved.enableReconnect) {
    for (const name of ['secrets', 'reconnectTokenTtl', 'resumeWindow', 'maxRetainedSessions', 'replayBufferSize', 'replayBufferBytes', 'reconnectTokenRoute', 'tokenRequestsPerMinute', 'onResume'] as const) {
      if (given[name] !== undefined) throw new InvalidOptionError(name, 'has no effect with enableReconnect: false')
    }
  }
  if (given.rateLimitPolicy !== undefined && resolved.inboundMessageRate === 0 && resolved.inboundByteRate === 0) {
    throw new InvalidOptionError('rateLimitPolicy', 'has no effect without inboundMessageRate or inboundByteRate')
  }
  if (given.slowConsumerPolicy !== undefined && resolved.maxBufferedAmount === 0) {
    throw new InvalidOptionError('slowConsumerPolicy', 'has no effect with maxBufferedAmount 0')
  }
  if (given.metrics !== undefined) resolved.metrics = resolveMetricsOptions((options as StabilizerOptions).metrics ?? false)
  if (resolved.heartbeatType !== 'custom') {
    for (const name of ['customPing', 'isCustomPong'] as const) {
      if (given[name] !== undefined) throw new InvalidOptionError(name, 'only applies with heartbeatType: \'custom\'')
    }
  }
  return resolved
}

/** @throws InvalidOptionError naming the first key of `value` that `schema` rejects. */
function assertValid (schema: TSchema, value: unknown, prefix: string): void {
  const error = Value.Errors(schema, value).First()
  if (error === undefined) return
  const name = prefix + error.path.replace(/^\//, '').replace(/\//g, '.') || '(options)'
  const detail = error.message === 'Unexpected property'
    ? 'unknown option'
    : `${error.message}${typeof error.schema.description === 'string' ? ` (${error.schema.description})` : ''}`
  throw new InvalidOptionError(name, detail)
}

/** Fills in the defaults of `metrics` and checks what the schema cannot. */
function resolveMetricsOptions (input: boolean | MetricsOptions): false | ResolvedMetricsOptions {
  if (input === false) return false
  const given = input === true ? {} : input
  const buckets = { ...metricsDefaults.buckets, ...given.buckets }
  for (const [name, bounds] of Object.entries(buckets)) {
    if (!bounds.every((bound, index) => Number.isFinite(bound) && (index === 0 || bound > bounds[index - 1]))) {
      throw new InvalidOptionError(`metrics.buckets.${name}`, 'bucket bounds must be finite and strictly increasing')
    }
  }
  const { registry, route } = given
  if (registry !== undefined && !isRegistry(registry)) {
    throw new InvalidOptionError('metrics.registry', 'expected a prom-client Registry (registerMetric, getSingleMetric, removeSingleMetric, metrics)')
  }
  if (typeof route === 'object') {
    for (const key of ['url', 'method', 'handler'] as const) {
      if (key in route) throw new InvalidOptionError(`metrics.route.${key}`, 'the stabilizer sets it (GET, its own handler); give the path as `path`')
    }
  }
  return { prefix: given.prefix ?? metricsDefaults.prefix, registry, route, buckets, groups: [...new Set(given.groups ?? [])] }
}

function isRegistry (value: object): value is MetricsRegistry {
  const candidate = value as Partial<Record<keyof MetricsRegistry, unknown>>
  return typeof candidate.registerMetric === 'function' && typeof candidate.getSingleMetric === 'function' &&
    typeof candidate.removeSingleMetric === 'function' && typeof candidate.metrics === 'function'
}
