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
