import t from 'tap'
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import stabilizer, { InvalidOptionError, optionDefaults } from '../lib/index.js'
import { resolveOptions } from '../lib/options.js'

void t.test('defaults fill every option that has one', async (t) => {
  const { customPing, isCustomPong, ...resolved } = resolveOptions(undefined)
  t.same(resolved, optionDefaults)
  t.equal(customPing(1), '{"type":"ping","ts":1}')
  t.equal(isCustomPong(Buffer.from('pong'), false), true)
  t.equal(isCustomPong(Buffer.from('{"type":"pong","ts":1}'), false), true)
  t.equal(isCustomPong(Buffer.from('{"type":"chat"}'), false), false)
  t.equal(isCustomPong(Buffer.from('{not json'), false), false)
  t.equal(isCustomPong(Buffer.from('pong'), true), false, 'binary is never a pong')
  t.equal(isCustomPong(Buffer.from(`{"type":"pong","pad":"${'x'.repeat(80)}"}`), false), false, 'long messages are not parsed')
  t.equal(resolveOptions({ maxConnections: 5 }).maxConnections, 5)
  t.equal(resolveOptions({ maxConnections: undefined }).maxConnections, optionDefaults.maxConnections, 'an explicit undefined keeps the default')
})

const bad: Array<[string, Record<string, unknown>, RegExp]> = [
  ['wrong type', { maxConnections: '10' }, /"maxConnections"/],
  ['not an integer', { maxConnections: 1.5 }, /"maxConnections"/],
  ['zero count', { maxConcurrentBroadcast: 0 }, /"maxConcurrentBroadcast"/],
  ['negative time', { shutdownTimeout: -1 }, /"shutdownTimeout"/],
  ['unknown key', { maxConection: 10 }, /maxConection/],
  ['unsupported close code', { shutdownCloseCode: 1000 }, /"shutdownCloseCode"/],
  ['stats path without slash', { statsRoute: 'stats' }, /"statsRoute"/],
  ['stats route true', { statsRoute: true }, /"statsRoute"/],
  ['identify not a function', { identify: 'clientId' }, /"identify"/],
  ['bad log level', { logLevel: 'loud' }, /"logLevel"/],
  ['prefix has no meaning here', { prefix: '/x' }, /prefix/]
]

for (const [name, options, message] of bad) {
  void t.test(`register fails on a bad option: ${name}`, async (t) => {
    const app = Fastify()
    const err = await (async () => { await app.register(stabilizer, options as never) })().then(() => undefined, (e: unknown) => e as Error & { code?: string })
    t.ok(err instanceof InvalidOptionError, 'an InvalidOptionError')
    t.equal(err?.code, 'FST_WS_STABILIZER_INVALID_OPTION')
    t.match(err?.message, message)
    await app.close()
  })
}

void t.test('size and compression options cannot be given when the app registered @fastify/websocket itself', async (t) => {
  for (const key of ['maxMessageSize', 'compression']) {
    const app = Fastify()
    await app.register(websocket)
    await t.rejects(async () => { await app.register(stabilizer, { [key]: key === 'compression' ? true : 10 }) }, { code: 'FST_WS_STABILIZER_INVALID_OPTION', message: new RegExp(key) })
    await app.close()
  }
})

const explained: Array<[string, Record<string, unknown>, string]> = [
  ['a union lists its values', { slowConsumerPolicy: 'kick' }, 'Invalid option "slowConsumerPolicy": must be one of \'disconnect\', \'drop\''],
  ['a numeric union lists its values', { shutdownCloseCode: 1000 }, 'Invalid option "shutdownCloseCode": must be one of 1012, 1001'],
  ['a path-or-false union says so', { statsRoute: 'stats' }, 'Invalid option "statsRoute": must be one of a path starting with /, false'],
  ['a typo gets the nearest name', { maxConection: 10 }, 'Invalid option "maxConection": unknown option (did you mean "maxConnections"?)'],
  ['a case slip gets the nearest name', { heartbeatinterval: 1000 }, 'Invalid option "heartbeatinterval": unknown option (did you mean "heartbeatInterval"?)'],
  ['a swap of two letters gets the nearest name', { hearbteatTimeout: 1000 }, 'Invalid option "hearbteatTimeout": unknown option (did you mean "heartbeatTimeout"?)'],
  ['a name far from every option gets no guess', { prefix: '/x' }, 'Invalid option "prefix": unknown option'],
  ['a 1 ms heartbeat is refused', { heartbeatInterval: 1 }, 'Invalid option "heartbeatInterval": 1 ms is below the minimum of 100 ms (or 0)'],
  ['a 49 ms heartbeat timeout is refused', { heartbeatTimeout: 49 }, 'Invalid option "heartbeatTimeout": 49 ms is below the minimum of 50 ms (or 0)'],
  ['a 50 ms close timeout is refused', { closeTimeout: 50 }, 'Invalid option "closeTimeout": 50 ms is below the minimum of 100 ms']
]

for (const [name, options, message] of explained) {
  void t.test(`an invalid option says what would be valid: ${name}`, async (t) => {
    t.throws(() => resolveOptions(options), { code: 'FST_WS_STABILIZER_INVALID_OPTION', message })
  })
}

void t.test('the minimums of the times are accepted, and 0 where it has a meaning', async (t) => {
  t.equal(resolveOptions({ heartbeatInterval: 100, heartbeatTimeout: 50, closeTimeout: 100 }).heartbeatInterval, 100)
  t.equal(resolveOptions({ heartbeatInterval: 0 }).heartbeatInterval, 0, 'heartbeats off')
  t.equal(resolveOptions({ heartbeatTimeout: 0 }).heartbeatTimeout, 0, 'keepalive only')
})

void t.test('a second registration fails with a code of its own, not Fastify\'s generic decorator error', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(stabilizer)
  await t.rejects(async () => { await app.register(stabilizer) }, { code: 'FST_WS_STABILIZER_ALREADY_REGISTERED', message: /already registered on this instance/ })
})

void t.test('a child context cannot register it again either', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(stabilizer)
  await t.rejects(async () => {
    await app.register(async (child) => { await child.register(stabilizer) })
  }, { code: 'FST_WS_STABILIZER_ALREADY_REGISTERED' })
})
