/** The HTTP routes: `GET /ws-stats` and `POST /reconnect-token`, with their TypeBox schemas. */
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { TokenRequestForbiddenError, TooManyTokenRequestsError } from './errors.js'
import type { Stabilizer } from './stabilizer.js'

const Counter = Type.Integer({ minimum: 0 })

/** Response schema of `GET /ws-stats`. */
export const StatsResponseSchema = Type.Object({
  status: Type.Union([Type.Literal('running'), Type.Literal('draining'), Type.Literal('closed')]),
  uptimeMs: Counter,
  activeConnections: Counter,
  totalConnections: Counter,
  totalDisconnections: Counter,
  closedByCode: Type.Record(Type.String(), Counter, { description: 'Closes by WebSocket close code.' }),
  closedByCause: Type.Record(Type.String(), Counter, { description: 'Closes by cause (client_closed, connection_lost, shutdown…).' }),
  rejectedUpgrades: Type.Object({ connectionLimit: Counter, shuttingDown: Counter, identity: Counter, clientId: Type.Integer({ minimum: 0, description: 'Upgrades refused for their client id (empty, not a string, or over 256 characters).' }), token: Type.Integer({ minimum: 0, description: 'Upgrades refused for their reconnect token (invalid, expired, already used).' }), origin: Counter, ipLimit: Counter, connectRate: Counter }),
  groups: Counter,
  memory: Type.Object({
    connections: Counter,
    userDataBytes: Counter,
    bufferedBytes: Counter,
    retainedSessionBytes: Counter,
    retainedSessions: Counter,
    averageBytesPerConnection: Counter
  }),
  protection: Type.Object({
    memoryEvictions: Type.Integer({ minimum: 0, description: 'Connections closed (4001) to bring user data back under maxTotalMemory.' }),
    slowConsumerDrops: Type.Integer({ minimum: 0, description: 'Messages not sent because the recipient\'s outbound buffer was full.' }),
    slowConsumerDisconnects: Type.Integer({ minimum: 0, description: 'Connections closed (4002) for a full outbound buffer.' }),
    inboundDropped: Type.Integer({ minimum: 0, description: 'Inbound messages over the rate limit, never delivered to a handler.' }),
    rateLimitCloses: Type.Integer({ minimum: 0, description: 'Connections closed (1008) for sending too fast.' })
  }),
  heartbeat: Type.Object({
    type: Type.Union([Type.Literal('ping'), Type.Literal('custom')]),
    intervalMs: Counter,
    timeoutMs: Counter,
    pingsSent: Counter,
    pongsReceived: Counter,
    timeouts: Type.Integer({ minimum: 0, description: 'Connections terminated for not answering a heartbeat.' }),
    reprieves: Type.Integer({ minimum: 0, description: 'Connections suspected at their deadline whose answer was then found in pending I/O (an event-loop stall, not a dead peer).' }),
    longestTickMs: Type.Number({ minimum: 0, description: 'Longest time one heartbeat tick held the event loop since start.' }),
    rttMs: Type.Object({
      samples: Counter,
      p50: Type.Union([Type.Number(), Type.Null()]),
      p90: Type.Union([Type.Number(), Type.Null()]),
      p99: Type.Union([Type.Number(), Type.Null()])
    }, { description: 'Percentiles of the connections\' smoothed round-trip times.' })
  }),
  cluster: Type.Optional(Type.Object({
    instances: Type.Integer({ minimum: 0, description: 'Instances alive, this one included.' }),
    connections: Type.Integer({ minimum: 0, description: 'Connections held by all of them.' })
  }, { description: 'Only with a shared adapter (e.g. Redis).' })),
  clientIds: Type.Optional(Type.Array(Type.String(), { description: 'Only with `statsIncludeClientIds: true`.' }))
}, { $id: 'FastifyWebsocketStabilizerStats' })

export function registerStatsRoute (fastify: FastifyInstance, path: string, stabilizer: Stabilizer): void {
  fastify.get(path, {
    schema: {
      description: 'Connection statistics of fastify-websocket-stabilizer',
      response: { 200: StatsResponseSchema }
    }
  }, async () => stabilizer.getStats())
}

/** Request body of `POST /reconnect-token`. */
export const TokenRequestSchema = Type.Object({
  clientId: Type.String({ minLength: 1, maxLength: 256 }),
  connectionSecret: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'The connection secret the server handed this client over its socket; needed when no identify hook is configured.' }))
}, { additionalProperties: false, $id: 'FastifyWebsocketStabilizerTokenRequest' })

/** Response of `POST /reconnect-token`. */
export const TokenResponseSchema = Type.Object({
  token: Type.String(),
  expiresAt: Type.Integer({ description: 'ms since the epoch' })
}, { $id: 'FastifyWebsocketStabilizerTokenResponse' })

// What a refused token request is told: what proves the client id, and where the client gets it.
const whereTheSecretIs = 'the server reads it from request.wsConnection.connectionSecret and hands it to the client over its socket; stabilizer.v1 clients get it as "secret" in the welcome frame (the client library needs no token request at all: its welcome carries a token)'
const secretMissing = `send "connectionSecret", the secret of this client's open connection (${whereTheSecretIs})`
const secretWrong = `"connectionSecret" is not the secret of an open connection of this client id (${whereTheSecretIs})`
const forbiddenWithIdentify = 'the identify hook did not give this request the client id asked for (send the same credentials as for the websocket upgrade)'

/**
 * `POST /reconnect-token`: a token only for a client id the caller holds — proved by the
 * app's identity hook (its identity for this HTTP request must be that client id) or, with no
 * hook, by the connection secret of that client's open connection. Never by a bare client id.
 * Rate limited per client id.
 */
export function registerReconnectTokenRoute (
  fastify: FastifyInstance,
  path: string,
  stabilizer: Stabilizer,
  identify: ((request: FastifyRequest) => string | Promise<string>) | undefined,
  requestsPerMinute: number
): void {
  fastify.post<{ Body: Static<typeof TokenRequestSchema> }>(path, {
    schema: {
      body: TokenRequestSchema,
      response: { 200: TokenResponseSchema }
    }
  }, async (request, reply) => {
    const { clientId, connectionSecret } = request.body
    const wait = stabilizer.tokens.takeRequest(clientId)
    if (wait > 0) {
      return await reply.code(429).header('retry-after', wait).send(new TooManyTokenRequestsError(requestsPerMinute, wait))
    }
    if (identify !== undefined) {
      if (await identify(request) !== clientId) throw new TokenRequestForbiddenError(forbiddenWithIdentify)
    } else if (connectionSecret === undefined || !stabilizer.holdsConnection(clientId, connectionSecret)) {
      throw new TokenRequestForbiddenError(connectionSecret === undefined ? secretMissing : secretWrong)
    }
    return stabilizer.issueToken(clientId)
  })
}
