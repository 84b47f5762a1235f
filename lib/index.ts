/** The plugin entry: options → stabilizer, the decorator, lifecycle hooks and routes. */
// Keeps @fastify/websocket's route and instance typings (websocket: true, websocketServer)
// in the published declarations: users' websocket routes type-check with this import alone.
/// <reference types="@fastify/websocket" preserve="true" />
import websocket from '@fastify/websocket'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { AlreadyRegisteredError, ConnectionNotFoundError, InvalidOptionError } from './errors.js'
import { createParamLengthCheck } from './param-length.js'
import { perMessageDeflateOf } from './compression.js'
import { resolveOptions, type StabilizerOptions } from './options.js'
import { registerReconnectTokenRoute, registerStatsRoute } from './routes.js'
import { Stabilizer } from './stabilizer.js'
import { selectProtocol } from './protocol.js'
import { createAdmissionHook, createRouteHook, shieldFromForeignPreClose } from './upgrade.js'
import { setupMetrics } from './metrics-route.js'
import type { StabilizedConnection } from './connection.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The fastify-websocket-stabilizer API. */
    stabilizer: Stabilizer
  }
  interface FastifyRequest {
    /** The stabilized connection of a websocket route's request; null elsewhere. */
    wsConnection: StabilizedConnection | null
  }
  interface FastifyContextConfig {
    /** `false` opts a websocket route out of automatic registration. */
    stabilizer?: boolean
  }
}

async function fastifyWebsocketStabilizer (fastify: FastifyInstance, rawOptions: StabilizerOptions): Promise<void> {
  // fastify-plugin shares the decorator with the parent: a second registration would only
  // fail later, on Fastify's generic FST_ERR_DEC_ALREADY_PRESENT.
  if (fastify.hasDecorator('stabilizer')) throw new AlreadyRegisteredError()
  const options = resolveOptions(rawOptions)
  const log = fastify.log.child({ plugin: 'fastify-websocket-stabilizer' }, options.logLevel === undefined ? {} : { level: options.logLevel })
  fastify.addHook('onRoute', createParamLengthCheck((fastify.initialConfig as { routerOptions?: { maxParamLength?: number } }).routerOptions?.maxParamLength, log))
  const ownsWebsocket = !fastify.hasDecorator('websocketServer')
  if (!ownsWebsocket) {
    for (const name of ['maxMessageSize', 'compression'] as const) {
      if (rawOptions[name] !== undefined) {
        throw new InvalidOptionError(name, '@fastify/websocket was registered before the stabilizer: set it in that plugin\'s `options` (maxPayload, perMessageDeflate), or let the stabilizer register it')
      }
    }
  }

  fitShutdownInPluginTimeout(fastify, rawOptions, options)

  const stabilizer = new Stabilizer(options, log)
  if (options.enableReconnect && stabilizer.ephemeralSecret) {
    log.warn('fastify-websocket-stabilizer: no `secrets` configured; reconnect tokens are signed with a random key and will not survive a restart nor work on another instance')
  }
  await stabilizer.start()
  fastify.decorate('stabilizer', stabilizer)
  fastify.decorateRequest('wsConnection', null)
  if (options.metrics !== false) stabilizer.metrics = await setupMetrics(fastify, options.metrics, stabilizer)

  const admit = createAdmissionHook(stabilizer, options, log)
  // Added before @fastify/websocket registers its own onRoute hook, so ours sees each
  // websocket route's handler first and can wrap it.
  fastify.addHook('onRoute', createRouteHook(stabilizer, admit, ownsWebsocket, log))

  /** app.close()'s drain: the port is released first, then every socket is drained. */
  const drainOnClose = async (): Promise<void> => {
    if (options.shutdownReleasePort) releasePort(fastify)
    await stabilizer.gracefulShutdown()
  }
  if (ownsWebsocket) {
    await fastify.register(websocket, {
      options: { maxPayload: options.maxMessageSize, perMessageDeflate: perMessageDeflateOf(options.compression), handleProtocols: selectProtocol },
      // Replaces @fastify/websocket's default preClose, which closes every client with no code.
      preClose: async function (this: FastifyInstance) {
        await drainOnClose()
        this.websocketServer.close()
      },
      errorHandler: function (error, socket, request) {
        // Handler failures are caught by the route wrapper; what reaches here are socket errors
        // (peer reset, protocol violations), after which ws closes the socket itself.
        if (request.wsConnection === null) request.log.debug({ err: error }, 'websocket error')
      }
    })
  } else {
    fastify.addHook('preClose', drainOnClose)
  }

  const wss = fastify.websocketServer
  wss.on('connection', (socket, raw) => {
    if (admit.onConnection(socket, raw) && !ownsWebsocket) shieldFromForeignPreClose(wss, socket)
  })

  fastify.addHook('onClose', async () => { await stabilizer.destroyAll() })

  if (options.statsRoute !== false) registerStatsRoute(fastify, options.statsRoute, stabilizer)
  if (options.enableReconnect && options.reconnectTokenRoute !== false) {
    registerReconnectTokenRoute(fastify, options.reconnectTokenRoute, stabilizer, options.identify, options.tokenRequestsPerMinute)
  }
}

/**
 * Stops accepting TCP connections before the drain instead of after it: Fastify closes the
 * listener once the preClose hooks are done and answers 503 to new requests meanwhile, so
 * nothing is served that would have been; but the port is free for a replacement process (or,
 * with `reusePort`, every new connection goes to the live instances) while the old sockets
 * drain. Fastify's own server.close() later finds the server stopped, which it accepts.
 */
function releasePort (fastify: FastifyInstance): void {
  if (fastify.server.listening) fastify.server.close()
}

/** Room left in Fastify's pluginTimeout for terminating stragglers and closing the server. */
export const closeMarginMs = 500

/**
 * Fastify runs every preClose hook inside one onClose step that avvio times with
 * `pluginTimeout` (default 10 s): a drain that outlasts it makes `app.close()` fail with
 * AVV_ERR_READY_TIMEOUT. The default deadline is capped to fit; an explicit one that cannot
 * fit fails register.
 */
function fitShutdownInPluginTimeout (fastify: FastifyInstance, rawOptions: StabilizerOptions, options: { shutdownTimeout: number }): void {
  const pluginTimeout = fastify.initialConfig.pluginTimeout ?? 10_000
  if (pluginTimeout <= 0) return // no timeout
  const limit = Math.max(0, pluginTimeout - closeMarginMs)
  if (rawOptions.shutdownTimeout !== undefined && rawOptions.shutdownTimeout > limit) {
    throw new InvalidOptionError('shutdownTimeout', `${rawOptions.shutdownTimeout} ms does not fit in Fastify's pluginTimeout (${pluginTimeout} ms) minus ${closeMarginMs} ms, and app.close() would fail with AVV_ERR_READY_TIMEOUT: raise pluginTimeout or lower shutdownTimeout`)
  }
  options.shutdownTimeout = Math.min(options.shutdownTimeout, limit)
}

/**
 * The stabilized connection of a websocket route's request, typed as present: inside a
 * `{ websocket: true }` handler the stabilizer has registered it before the handler runs.
 * @throws ConnectionNotFoundError elsewhere (a plain HTTP request, a route opted out with
 * `config: { stabilizer: false }`).
 */
export function stabilizedConnection (request: FastifyRequest): StabilizedConnection {
  if (request.wsConnection === null) throw new ConnectionNotFoundError(`(request ${request.id} has no stabilized connection)`)
  return request.wsConnection
}

export const stabilizer = fp(fastifyWebsocketStabilizer, {
  fastify: '5.x',
  name: 'fastify-websocket-stabilizer'
})
export default stabilizer

export { Stabilizer, type BroadcastOptions, type MemoryUsage, type StabilizerStats, type HeartbeatStats, type RttPercentiles, type ClusterStats } from './stabilizer.js'
export { MemoryAdapter, MemoryHub, type MemoryAdapterOptions } from './adapter/memory.js'
export * from './adapter/adapter.js'
export type { StabilizerOptions, ResumeInfo, MetricsOptions, MetricsRouteOptions, MetricsBuckets, MetricsRegistry } from './options.js'
export { defaults as optionDefaults, OptionsSchema, metricsDefaults } from './options.js'
export type { Compression, CompressionOptions } from './compression.js'
export type { StabilizedConnection, ConnectionState, DisconnectCause } from './connection.js'
export type { BroadcastResult } from './fanout.js'
export type { ShutdownReport, LifecycleState } from './shutdown.js'
export type { OutboundMessage } from './message.js'
export { CloseCode, closeCodeTable, shouldReconnect, type CloseCodeInfo } from './close-codes.js'
export * from './errors.js'
export { StatsResponseSchema, TokenRequestSchema, TokenResponseSchema } from './routes.js'
export { redactReconnectToken, redactedRequestSerializer } from './log-redaction.js'
