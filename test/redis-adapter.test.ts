import t from 'tap'
import { randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import { redisAdapter, type RedisAdapterOptions } from '../lib/adapter/redis.js'
import { AdapterUnavailableError, InvalidOptionError } from '../lib/errors.js'
import { adapterContract, startInstances, text, until, type AdapterFactory } from './fixtures/adapter-contract.js'
import { freePort, startRedisServer } from './fixtures/redis-server.js'

const server = await startRedisServer()
t.teardown(server.stop)

let sets = 0
/** Adapters on the test's Redis, under a key prefix no other set uses. */
function factoryOn (url: string, extra: Partial<RedisAdapterOptions> = {}): AdapterFactory {
  return async (instances) => {
    const keyPrefix = `t${process.pid}-${sets++}:`
    return { adapters: Array.from({ length: instances }, () => redisAdapter({ redis: url, keyPrefix, instanceTtl: 1500, ...extra })) }
  }
}

void t.test('the adapter contract, on a single Redis', async (t) => {
  adapterContract(t, factoryOn(server.url))
})

void t.test('options are checked when the adapter is made', async (t) => {
  t.throws(() => redisAdapter({ redis: server.url, keyPrefix: 'a{b}' }), InvalidOptionError)
  t.throws(() => redisAdapter({ redis: server.url, commandTimeout: -1 }), InvalidOptionError)
  t.throws(() => redisAdapter({ redis: 42 as unknown as string }), InvalidOptionError)
  t.equal(redisAdapter({ redis: server.url }).shared, true, 'a Redis adapter is shared')
})

void t.test('Redis unreachable at start: start rejects with a clear error, nothing left running', async (t) => {
  const port = await freePort() // nobody listens there
  const adapter = redisAdapter({ redis: `redis://127.0.0.1:${port}`, connectTimeout: 500 })
  const handlers = { deliver: () => undefined, replaced: () => {}, disconnect: () => {} }
  const error = await adapter.start({ instanceId: 'x', limits: { maxEntries: 10, maxBytes: 1000, retentionMs: 1000, maxSessions: 10 }, connectionCount: () => 0, handlers })
    .then(() => undefined, (err: unknown) => err)
  t.ok(error instanceof AdapterUnavailableError, 'an AdapterUnavailableError')
  t.equal((error as Error & { code: string }).code, 'FST_WS_STABILIZER_ADAPTER_UNAVAILABLE')
  t.match((error as Error).message, `127.0.0.1:${port}`, 'the message says where')
  t.match((error as Error).message, /ECONNREFUSED|not reachable/, 'and why')
  await adapter.stop()
  await t.rejects(adapter.publish('*', text('x')), 'calls after a failed start reject')
})

void t.test('keyPrefix isolates two clusters on one Redis', async (t) => {
  const [a] = await startInstances(t, async () => ({ adapters: [redisAdapter({ redis: server.url, keyPrefix: `iso-a-${randomUUID()}:` })] }), { instances: 1 })
  const [b] = await startInstances(t, async () => ({ adapters: [redisAdapter({ redis: server.url, keyPrefix: `iso-b-${randomUUID()}:` })] }), { instances: 1 })
  a.adapter.subscribe('*')
  b.adapter.subscribe('*')
  await a.adapter.top('*')
  await b.adapter.top('*')
  await a.adapter.publish('*', text('for a'))
  await a.adapter.publish('*', text('for a too'))
  const fromB = await b.adapter.publish('*', text('for b'))
  t.equal(fromB.position.seq, 1, "b's stream starts at 1: a's entries are not in it")
  t.same(b.delivered.map((e) => String(e.payload)), [JSON.stringify('for b')], 'b saw only its own')
  t.same(a.delivered.map((e) => String(e.payload)), [JSON.stringify('for a'), JSON.stringify('for a too')], 'a saw only its own')
  await a.adapter.claim('same-id')
  t.equal(await b.adapter.locate('same-id'), undefined, 'presence is not shared')
  await b.adapter.claim('same-id')
  t.same(a.replaced, [], 'a claim in b replaces nothing in a')
  await a.adapter.saveSession({ clientId: 'sess', sessionId: 's', protocol: true, userData: [], groups: [] })
  t.equal(await b.adapter.takeSession('sess', 's'), undefined, 'sessions are not shared')
  const expiresAt = Date.now() + 60_000
  t.equal(await a.adapter.redeemToken('tok', expiresAt), true)
  t.equal(await b.adapter.redeemToken('tok', expiresAt), true, 'tokens are not shared')
  await until(() => a.adapter.cluster()?.instances === 1 && b.adapter.cluster()?.instances === 1, 'each to count itself')
  t.same(a.adapter.cluster()?.instances, 1, 'each cluster counts only its own instances')
})

void t.test('AUTH: a password in the URL works, a wrong one fails start clearly', async (t) => {
  const secured = await startRedisServer({ password: 's3cret pass' })
  t.teardown(secured.stop)
  const [a, b] = await startInstances(t, factoryOn(secured.url))
  b.adapter.subscribe('*')
  await b.adapter.top('*')
  await a.adapter.publish('*', text('authenticated'))
  await until(() => b.delivered.length === 1, 'b to get it')
  t.equal(String(b.delivered[0].payload), JSON.stringify('authenticated'))
  const wrong = redisAdapter({ redis: `redis://:wrong@127.0.0.1:${secured.port}`, connectTimeout: 1000 })
  const handlers = { deliver: () => undefined, replaced: () => {}, disconnect: () => {} }
  const error = await wrong.start({ instanceId: 'w', limits: { maxEntries: 10, maxBytes: 1000, retentionMs: 1000, maxSessions: 10 }, connectionCount: () => 0, handlers })
    .then(() => undefined, (err: unknown) => err)
  t.ok(error instanceof AdapterUnavailableError, 'start rejects')
  t.match((error as Error).message, /WRONGPASS|NOAUTH|invalid/i, 'saying the password was refused')
  await wrong.stop()
})

void t.test("the user's own client is used and left open", async (t) => {
  const client = new Redis(server.url)
  client.on('error', () => {})
  t.teardown(() => { client.disconnect() })
  const [a, b] = await startInstances(t, async () => {
    const keyPrefix = `own-${randomUUID()}:`
    return { adapters: [redisAdapter({ redis: client, keyPrefix }), redisAdapter({ redis: server.url, keyPrefix })] }
  })
  a.adapter.subscribe('g:x')
  await a.adapter.top('g:x')
  await b.adapter.publish('g:x', text('to the own client'))
  await until(() => a.delivered.length === 1, 'a to get it')
  await a.adapter.stop()
  t.equal(client.status, 'ready', 'stop() leaves the client open')
  t.equal(await client.ping(), 'PONG')
})

void t.test('Redis commands per publish do not grow with the subscribed instances', async (t) => {
  const admin = new Redis(server.url)
  admin.on('error', () => {})
  t.teardown(() => { admin.disconnect() })
  // Every command Redis ran, those a script runs included, by name.
  const calls = async (): Promise<Map<string, number>> => {
    const info = await admin.info('commandstats')
    const counts = new Map<string, number>()
    for (const match of info.matchAll(/cmdstat_([\w|]+):calls=(\d+)/g)) counts.set(match[1], Number(match[2]))
    return counts
  }
  const perPublish = async (subscribers: number): Promise<Record<string, number>> => {
    const instances = await startInstances(t, factoryOn(server.url, { instanceTtl: 600_000, positionCheckInterval: 600_000 }), { instances: subscribers + 1 })
    const [publisher, ...readers] = instances
    for (const reader of readers) {
      reader.adapter.subscribe('g:fan')
      await reader.adapter.top('g:fan')
    }
    await publisher.adapter.publish('g:fan', text('warm-up'))
    await until(() => readers.every((r) => r.delivered.length === 1), 'the warm-up')
    const before = await calls()
    for (let i = 0; i < 20; i++) await publisher.adapter.publish('g:fan', text(`n${i}`))
    await until(() => readers.every((r) => r.delivered.length === 21), 'every reader to get 20')
    const after = await calls()
    const delta: Record<string, number> = {}
    for (const [name, count] of after) {
      if (name === 'info') continue
      const more = count - (before.get(name) ?? 0)
      if (more > 0) delta[name] = more / 20
    }
    return delta
  }
  const one = await perPublish(1)
  const four = await perPublish(4)
  t.equal(one.evalsha, 1, 'one EVALSHA per publish')
  t.equal(one.publish, 1, 'one PUBLISH (inside it) per publish')
  t.same(four, one, 'the same commands per publish with four subscribed instances as with one')
})

void t.test('a release while its claim is in flight is final: the presence refresh never writes the client back', async (t) => {
  const [a, b] = await startInstances(t, factoryOn(server.url), { limits: { retentionMs: 600 } })
  // The connection closed before its claim's answer came back.
  const claiming = a.adapter.claim('brief')
  const releasing = a.adapter.release('brief')
  await Promise.all([claiming, releasing])
  t.equal(await b.adapter.locate('brief'), undefined, 'released')
  // Presence is refreshed every third of the resume window here: three refreshes pass.
  await new Promise((resolve) => setTimeout(resolve, 700))
  t.equal(await b.adapter.locate('brief'), undefined, 'and still released after the refreshes')
})
