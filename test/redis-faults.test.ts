import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { randomUUID } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import { redisAdapter, type RedisAdapterOptions } from '../lib/adapter/redis.js'
import { AdapterUnavailableError } from '../lib/errors.js'
import { startInstances, text, until, type AdapterFactory, type Instance } from './fixtures/adapter-contract.js'
import { namespacesUnavailable } from './fixtures/netns.js'
import { createLinkedNamespace } from './fixtures/netns-host.js'
import { killProcess } from './fixtures/processes.js'
import { startRedisServer } from './fixtures/redis-server.js'
import { settled } from './fixtures/hang-guard.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const instanceScript = fileURLToPath(new URL('./fixtures/redis-instance.ts', import.meta.url))

const unavailable = await namespacesUnavailable()
if (unavailable !== false && process.env.CI !== undefined) throw new Error(`CI must run the fault tests: ${unavailable}`)

function factoryOn (url: string, extra: Partial<RedisAdapterOptions> = {}): AdapterFactory {
  return async (instances) => {
    const keyPrefix = `f-${randomUUID()}:`
    return { adapters: Array.from({ length: instances }, () => redisAdapter({ redis: url, keyPrefix, instanceTtl: 1500, commandTimeout: 500, ...extra })) }
  }
}

function seqsOf (instance: Instance, stream: string, epoch?: string): number[] {
  return instance.delivered.filter((e) => e.stream === stream && (epoch === undefined || e.epoch === epoch)).map((e) => e.seq)
}

function increasing (list: number[]): boolean {
  return list.every((value, i) => i === 0 || value > list[i - 1])
}

void t.test('Redis killed and restarted empty mid-traffic', async (t) => {
  const redis = await startRedisServer()
  t.teardown(redis.stop)
  const [a, b] = await startInstances(t, factoryOn(redis.url))
  a.adapter.subscribe('*')
  await a.adapter.top('*')
  await a.adapter.claim('alice')
  await a.adapter.saveSession({ clientId: 'alice', sessionId: 'sa', protocol: true, userData: [], groups: [] })

  const traffic = { running: true }
  const failures: unknown[] = []
  let published = 0
  const flowing = (async () => {
    for (let i = 0; traffic.running; i++) {
      try {
        await b.adapter.publish('*', text(`t${i}`))
        published++
      } catch (err) {
        failures.push(err)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    }
  })()
  await until(() => seqsOf(a, '*').length >= 5, 'traffic to flow')
  const before = await a.adapter.top('*')

  await redis.kill()
  await until(() => failures.length > 0, 'a publish to reject')
  t.same(failures.filter((err) => !(err instanceof AdapterUnavailableError)).map(String), [], 'publishes reject with AdapterUnavailableError')
  await until(() => a.connectivity.includes(false), 'a to report the store lost')
  const calls: Array<[string, Promise<unknown>]> = [
    ['publish', b.adapter.publish('*', text('down'))],
    ['top', b.adapter.top('*')],
    ['read', b.adapter.read('*', before, 10)],
    ['claim', b.adapter.claim('bob')],
    ['locate', b.adapter.locate('alice')],
    ['disconnect', b.adapter.disconnect('alice', 4000, 'x')],
    ['saveSession', b.adapter.saveSession({ clientId: 'bob', sessionId: 'sb', protocol: true, userData: [], groups: [] })],
    ['takeSession', b.adapter.takeSession('alice', 'sa')],
    ['redeemToken', b.adapter.redeemToken('tok', Date.now() + 10_000)]
  ]
  for (const [name, call] of calls) {
    const outcome = await settled(call, name)
    t.ok(!outcome.ok && outcome.error instanceof AdapterUnavailableError, `${name} rejects with AdapterUnavailableError while Redis is down`)
  }

  await redis.restart()
  await until(() => a.connectivity.at(-1) === true && b.connectivity.at(-1) !== false, 'both to report the store back')
  const resumedFrom = published
  await until(() => published > resumedFrom + 5, 'publishes to succeed again')
  await until(() => a.delivered.some((e) => e.epoch !== before.epoch), 'delivery to a to resume by itself')
  traffic.running = false
  await flowing
  const after = await a.adapter.read('*', before, 1000)
  t.not(after.top.epoch, before.epoch, 'Redis lost the stream: a new epoch')
  t.equal(after.missed, -1, 'a position of the old epoch reads as history lost')
  const fresh = seqsOf(a, '*', after.top.epoch)
  t.ok(increasing(fresh), 'the new epoch is delivered in order, each entry once')
  await until(() => seqsOf(a, '*', after.top.epoch).length === after.top.seq, 'a to have every entry of the new epoch')
  t.same(seqsOf(a, '*', after.top.epoch), Array.from({ length: after.top.seq }, (_, i) => i + 1), 'and none is missing')
  await until(() => a.adapter.cluster()?.instances === 2, 'both instances to announce themselves again')
  await until(async () => await b.adapter.locate('alice') === 'connected', "a's client to be present again")
  await until(async () => (await b.adapter.takeSession('alice', 'sa'))?.clientId === 'alice', "a's held session to be written again")
  t.pass('presence and the held session came back')
})

void t.test('a subscriber cut off mid-traffic reads what it missed, in order, once', async (t) => {
  const redis = await startRedisServer()
  t.teardown(redis.stop)
  const admin = new Redis(redis.url)
  admin.on('error', () => {})
  t.teardown(() => { admin.disconnect() })
  const [a, b] = await startInstances(t, factoryOn(redis.url))
  a.adapter.subscribe('g:room')
  await a.adapter.top('g:room')
  for (let i = 0; i < 5; i++) await b.adapter.publish('g:room', text(`before${i}`))
  await until(() => seqsOf(a, 'g:room').length === 5, 'the first 5')
  await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
  for (let i = 0; i < 20; i++) await b.adapter.publish('g:room', text(`during${i}`))
  await until(() => seqsOf(a, 'g:room').length === 25, 'a to catch up')
  t.same(seqsOf(a, 'g:room'), Array.from({ length: 25 }, (_, i) => i + 1), 'every entry, in order, once')
  t.same(a.delivered.map((e) => JSON.parse(String(e.payload)) as string).slice(5, 7), ['during0', 'during1'])
})

void t.test('a gap the log no longer holds is skipped, never delivered out of order', async (t) => {
  const redis = await startRedisServer()
  t.teardown(redis.stop)
  const admin = new Redis(redis.url)
  admin.on('error', () => {})
  t.teardown(() => { admin.disconnect() })
  const [a, b] = await startInstances(t, factoryOn(redis.url), { limits: { maxEntries: 3 } })
  a.adapter.subscribe('g:room')
  await a.adapter.top('g:room')
  await b.adapter.publish('g:room', text('first'))
  await until(() => seqsOf(a, 'g:room').length === 1, 'the first')
  await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
  for (let i = 0; i < 10; i++) await b.adapter.publish('g:room', text(`n${i}`))
  await until(() => seqsOf(a, 'g:room').at(-1) === 11, 'a to reach the top')
  const seqs = seqsOf(a, 'g:room')
  t.ok(increasing(seqs), `in order, each once (${seqs.join(',')})`)
  t.same(seqs.slice(-3), [9, 10, 11], 'the entries the log kept are delivered')
})

void t.test('the publisher gets its own entry even while its subscription is down', async (t) => {
  const redis = await startRedisServer()
  t.teardown(redis.stop)
  const admin = new Redis(redis.url)
  admin.on('error', () => {})
  t.teardown(() => { admin.disconnect() })
  const [a] = await startInstances(t, factoryOn(redis.url), { instances: 1, limits: { maxEntries: 0 } })
  a.adapter.subscribe('*')
  await a.adapter.top('*')
  await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
  const results = []
  for (let i = 0; i < 5; i++) results.push(await a.adapter.publish('*', text(`own${i}`)))
  for (const result of results) t.equal(result.local, `${a.instanceId}:*:${result.position.seq}`, `own entry ${result.position.seq} delivered before publish resolved`)
  t.same(seqsOf(a, '*'), [1, 2, 3, 4, 5], 'in order, each once, though nothing is kept in Redis')
})

void t.test('a SIGKILLed instance leaves the cluster within seconds', async (t) => {
  const redis = await startRedisServer()
  t.teardown(redis.stop)
  const keyPrefix = `dead-${randomUUID()}:`
  const instanceTtl = 1500
  const [a] = await startInstances(t, async () => ({ adapters: [redisAdapter({ redis: redis.url, keyPrefix, instanceTtl })] }), { instances: 1 })
  a.connections = 1
  const child = spawn(process.execPath, ['--import', 'tsx', instanceScript, redis.url, keyPrefix, String(instanceTtl), 'carol', 'dave'], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(async () => { await killProcess(child) })
  const [line] = await once(child.stdout!, 'data') as [Buffer]
  t.match(String(line), 'ready')
  await until(() => a.adapter.cluster()?.instances === 2 && a.adapter.cluster()?.connections === 3, 'a to see the child and its 2 connections')
  t.equal(await a.adapter.locate('carol'), 'connected', 'the child holds carol')
  await killProcess(child)
  await until(() => a.adapter.cluster()?.instances === 1, 'the dead instance to leave the count', 4 * instanceTtl)
  t.same(a.adapter.cluster(), { instances: 1, connections: 1 })
  t.equal(await a.adapter.locate('carol'), undefined, "a dead instance's clients are not connected anywhere")
  t.equal(await a.adapter.disconnect('dave', 4000, 'x'), false, 'and disconnect finds nobody to ask')
  await a.adapter.claim('carol')
  t.equal(await a.adapter.locate('carol'), 'connected', 'the id can be claimed again')
})

void t.test('a network cut to Redis (iptables DROP) is detected and recovered from', { skip: unavailable }, async (t) => {
  const ns = await createLinkedNamespace()
  t.teardown(ns.destroy)
  const redis = await startRedisServer({ netns: ns.name, host: ns.address })
  t.teardown(redis.stop)
  const [a, b] = await startInstances(t, factoryOn(redis.url))
  a.adapter.subscribe('*')
  await a.adapter.top('*')
  await b.adapter.publish('*', text('before'))
  await until(() => seqsOf(a, '*').length === 1, 'the first entry')
  const rule = ['INPUT', '-p', 'tcp', '--dport', String(redis.port), '-j', 'DROP']
  await ns.inside('iptables', '-A', ...rule)
  const outcome = await settled(b.adapter.publish('*', text('cut')), 'a publish during the cut')
  t.ok(!outcome.ok && outcome.error instanceof AdapterUnavailableError, 'a publish during the cut rejects with AdapterUnavailableError')
  await until(() => a.connectivity.includes(false), 'a to notice the cut')
  await until(() => b.connectivity.includes(false), 'b to notice the cut')
  await ns.inside('iptables', '-D', ...rule)
  await until(() => a.connectivity.at(-1) === true, 'a to report the store back', 20_000)
  let after: Awaited<ReturnType<typeof b.adapter.publish>> | undefined
  await until(async () => {
    after = await b.adapter.publish('*', text('after')).catch(() => undefined)
    return after !== undefined
  }, 'publishes to succeed again', 20_000)
  await until(() => a.delivered.some((e) => e.seq === after!.position.seq && e.epoch === after!.position.epoch), 'delivery to a to resume by itself')
  t.ok(increasing(seqsOf(a, '*')), `in order, each once (${seqsOf(a, '*').join(',')})`)
  t.equal(seqsOf(a, '*').at(-1), after!.position.seq, 'up to the latest')
})
