import Fastify, { type FastifyRequest } from 'fastify'
import { expectAssignable, expectError, expectType } from 'tsd'
import { Registry } from 'prom-client'
import stabilizer, {
  stabilizedConnection,
  CloseCode,
  ConnectionLimitExceededError,
  WebSocketStabilizerError,
  type BroadcastResult,
  type ShutdownReport,
  type StabilizedConnection,
  type StabilizerOptions,
  type StabilizerStats,
  type Stabilizer
} from 'fastify-websocket-stabilizer'

const app = Fastify()
void app.register(stabilizer, {} satisfies StabilizerOptions)
void app.register(stabilizer, {
  maxConnections: 10_000,
  maxMessageSize: 65_536,
  compression: true,
  shutdownCloseCode: 1001,
  statsRoute: false,
  logLevel: 'warn',
  identify: async (request: FastifyRequest) => String(request.headers['x-user']),
  onConnect: (connection) => { expectType<string>(connection.id) },
  onDisconnect: (connection, code, reason) => {
    expectType<StabilizedConnection>(connection)
    expectType<number>(code)
    expectType<string>(reason)
  }
})

// Options that must not compile.
expectError(app.register(stabilizer, { maxConnections: '10' }))
expectError(app.register(stabilizer, { shutdownCloseCode: 1000 }))
expectError(app.register(stabilizer, { statsRoute: true }))
expectError(app.register(stabilizer, { identify: 'clientId' }))

// metrics: true, or its object; a prom-client Registry fits `registry`; route options take Fastify hooks.
void app.register(stabilizer, { metrics: true })
void app.register(stabilizer, {
  metrics: {
    prefix: 'chat_',
    route: { path: '/internal/metrics', onRequest: async (request, reply) => { if (request.headers.authorization === undefined) await reply.code(401).send() } },
    buckets: { heartbeatRtt: [0.001, 0.01, 0.1] },
    groups: ['lobby']
  }
})
void app.register(stabilizer, { metrics: { registry: new Registry(), route: false } })
expectError(app.register(stabilizer, { metrics: 'yes' }))
expectError(app.register(stabilizer, { metrics: { prefix: 1 } }))
expectError(app.register(stabilizer, { metrics: { route: true } }))
expectError(app.register(stabilizer, { metrics: { buckets: { rtt: [1] } } }))
expectError(app.register(stabilizer, { logLevel: 'loud' }))

// The decorator and its methods.
expectType<Stabilizer>(app.stabilizer)
expectType<Promise<boolean>>(app.stabilizer.sendToClient('a', { any: 'json' }))
expectType<Promise<BroadcastResult>>(app.stabilizer.broadcast('hi', { exclude: ['a'], group: 'g' }))
expectType<Promise<boolean>>(app.stabilizer.disconnect('a', CloseCode.NORMAL, 'bye'))
expectType<boolean>(app.stabilizer.join('a', 'g'))
expectType<string[]>(app.stabilizer.getGroups('a'))
expectType<StabilizedConnection | undefined>(app.stabilizer.getConnection('a'))
expectType<StabilizerStats>(app.stabilizer.getStats())
expectType<Promise<ShutdownReport>>(app.stabilizer.gracefulShutdown(5_000))
expectError(app.stabilizer.broadcast('hi', { exclude: 1 }))
expectError(app.stabilizer.sendToClient(1, 'x'))
// Internals are not part of the published API.
expectError(app.stabilizer.attach)
expectError(app.stabilizer.reserveSlot)

// Routes: the websocket handler gets the stabilized connection on the request.
app.get('/ws/:clientId', { websocket: true, config: { stabilizer: true } }, (socket, request) => {
  expectType<StabilizedConnection | null>(request.wsConnection)
  // The helper types it as present, without `!`.
  expectType<StabilizedConnection>(stabilizedConnection(request))
  expectType<string>(stabilizedConnection(request).connectionSecret)
  socket.send('typed')
})
app.get('/raw', { websocket: true, config: { stabilizer: false } }, (socket) => {
  expectType<StabilizedConnection>(app.stabilizer.connect('id', socket, { any: 'metadata' }))
})

// Errors.
const err = new ConnectionLimitExceededError(10)
expectAssignable<WebSocketStabilizerError>(err)
expectType<'FST_WS_STABILIZER_CONNECTION_LIMIT'>(err.code)
expectType<number | undefined>(err.closeCode)

// Reconnection and protection options and API.
void app.register(stabilizer, {
  secrets: ['x'.repeat(32)],
  reconnectTokenTtl: 60_000,
  resumeWindow: 30_000,
  onResume: (connection, info) => {
    expectType<StabilizedConnection>(connection)
    expectType<string>(info.sessionId)
    expectType<boolean>(info.stateRestored)
  },
  maxBufferedAmount: 65_536,
  slowConsumerPolicy: 'drop',
  memoryEvictionPolicy: 'largest',
  maxTotalMemory: 1_000_000,
  inboundMessageRate: 100,
  rateLimitPolicy: 'close',
  allowedOrigins: ['https://app.example.com'],
  heartbeatType: 'custom',
  customPing: (timestamp) => `ping ${timestamp}`,
  isCustomPong: (data, isBinary) => !isBinary && data.toString() === 'pong'
})
expectError(app.register(stabilizer, { slowConsumerPolicy: 'ignore' }))
expectError(app.register(stabilizer, { memoryEvictionPolicy: 'random' }))
expectError(app.register(stabilizer, { allowedOrigins: 'https://app.example.com' }))
expectType<string>(app.stabilizer.generateReconnectToken('a'))
expectType<Promise<string>>(app.stabilizer.validateReconnectToken('token'))
expectType<number>((await app.stabilizer.broadcast('x')).dropped)
expectType<number>(app.stabilizer.getMemoryUsage().retainedSessionBytes)
