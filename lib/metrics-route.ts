// Where the stabilizer's metrics are served from: fastify-metrics' client and route when it
// was registered first, else prom-client (loaded only when metrics are on) and GET /metrics.
import type { FastifyInstance, RouteOptions } from 'fastify'
import { InvalidOptionError, MetricsClientMissingError } from './errors.js'
import { registerSeries, type MetricsSource, type PromClient, type StabilizerMetrics } from './metrics.js'
import { metricsDefaults, type MetricsRegistry, type ResolvedMetricsOptions } from './options.js'

/** prom-client as this plugin needs it: the metric classes and a registry to make. */
export interface PromClientModule extends PromClient {
  Registry: new () => MetricsRegistry
}

/** What fastify-metrics decorates the instance with (`fastify.metrics`). */
interface FastifyMetricsDecorator {
  client: PromClientModule & { register: MetricsRegistry }
}

/** Loads prom-client, an optional peer dependency. */
export async function importPromClient (): Promise<PromClientModule> {
  const loaded = await import('prom-client') as unknown as PromClientModule & { default?: PromClientModule }
  return loaded.default ?? loaded
}

/**
 * Registers the stabilizer's series and, unless fastify-metrics serves them or `route` is
 * false, `GET /metrics`. The series leave the registry when the app closes, so a registry
 * outlives its app (a process that builds apps one after another, tests).
 * @throws MetricsClientMissingError when prom-client cannot be loaded.
 * @throws InvalidOptionError when the registry already has the series, or with fastify-metrics, a registry or a route was given.
 */
export async function setupMetrics (
  fastify: FastifyInstance,
  settings: ResolvedMetricsOptions,
  source: MetricsSource,
  loadClient: () => Promise<PromClientModule> = importPromClient
): Promise<StabilizerMetrics> {
  const fastifyMetrics = findFastifyMetrics(fastify)
  let client: PromClientModule
  let registry: MetricsRegistry
  let route = settings.route
  if (fastifyMetrics !== undefined) {
    for (const name of ['registry', 'route'] as const) {
      if (settings[name] !== undefined && settings[name] !== false) {
        throw new InvalidOptionError(`metrics.${name}`, 'fastify-metrics was registered first: its registry and its route serve the stabilizer\'s series (leave it unset)')
      }
    }
    // The same prom-client copy as fastify-metrics: two copies would make the series vanish from its route.
    client = fastifyMetrics.client
    registry = fastifyMetrics.client.register
    route = false
  } else {
    try {
      client = await loadClient()
    } catch (err) {
      throw new MetricsClientMissingError(`install it next to the stabilizer (npm install prom-client), or register fastify-metrics first (${(err as Error).message})`, { cause: err })
    }
    registry = settings.registry ?? new client.Registry()
    route ??= metricsDefaults.route
  }

  const series = registerSeries(client, registry, settings, source)
  fastify.addHook('onClose', async () => { series.unregister() })
  if (route !== false) serveMetrics(fastify, registry, route)
  return series.recorder
}

function findFastifyMetrics (fastify: FastifyInstance): FastifyMetricsDecorator | undefined {
  if (!fastify.hasDecorator('metrics')) return undefined
  const decorator = (fastify as unknown as { metrics?: Partial<FastifyMetricsDecorator> }).metrics
  const client = decorator?.client
  if (typeof client?.Counter !== 'function' || typeof client.register?.metrics !== 'function') return undefined
  return decorator as FastifyMetricsDecorator
}

function serveMetrics (fastify: FastifyInstance, registry: MetricsRegistry, route: Exclude<ResolvedMetricsOptions['route'], false | undefined>): void {
  const { path = metricsDefaults.route, ...routeOptions } = typeof route === 'string' ? { path: route } : route
  fastify.route({
    // Scrapes come every few seconds: logged only when something goes wrong, unless the route options say otherwise.
    logLevel: 'warn',
    ...(routeOptions as Partial<RouteOptions>),
    method: 'GET',
    url: path,
    handler: async (_request, reply) => await reply.type(registry.contentType).send(await registry.metrics())
  })
}
