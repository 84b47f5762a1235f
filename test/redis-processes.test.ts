import t from 'tap'
import { randomUUID } from 'node:crypto'
import { WebSocket } from 'ws'
import { StabilizedWebSocket, type ResumeOutcome } from '../lib/client/index.js'
import { startInstanceProcess } from './fixtures/cluster-processes.js'
import { ProtocolPeer } from './fixtures/protocol-peer.js'
import { startRedisServer } from './fixtures/redis-server.js'
import { waitFor } from './fixtures/server.js'
import { startBalancer } from './fixtures/tcp-balancer.js'
import { guarded } from './fixtures/hang-guard.js'

// Instances in processes of their own over a Redis of the test's own: an instance can be
// SIGKILLed (no shutdown hook runs, nothing is written on the way out) and Redis killed.

const instanceTtl = 1500
const adapterOptions = { instanceTtl, commandTimeout: 500 }
/** Heartbeats off: the subject is what survives an instance, not liveness. */
const options = { heartbeatInterval: 0 }

async function clusterStats (httpUrl: string): Promise<{ instances: number, connections: number } | undefined> {
  const response = await fetch(`${httpUrl}/ws-stats`)
  return ((await response.json()) as { cluster?: { instances: number, connections: number } }).cluster
}

async function untilAsync (condition: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const start = Date.now()
  while (!await condition()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

void t.test('a ProtocolPeer resumes on B with data, groups and every missed message after A was SIGKILLed', async (t) => {
  const redis = await startRedisServer()
  t.teardown(redis.stop)
  const keyPrefix = `p-${randomUUID()}:`
  const a = await startInstanceProcess(t, redis.url, keyPrefix, options, adapterOptions)
  const b = await startInstanceProcess(t, redis.url, keyPrefix, options, adapterOptions)

  const first = await ProtocolPeer.open(`${a.url}/ws/eva`)
  await a.ask({ cmd: 'join', id: 'eva', group: 'room' })
  await a.ask({ cmd: 'setUserData', id: 'eva', key: 'cart', value: { items: [1, 2] } })
  t.same(await a.ask({ cmd: 'send', id: 'eva', message: 'seen' }), { sent: true })
  await first.until(() => first.messages.length === 1 && first.positions['g:room'] !== undefined)
  const closed = new Promise((resolve) => first.socket.once('close', resolve))
  await a.kill()
  await closed

  const missed: string[] = []
  for (let i = 0; i < 5; i++) {
    for (const [cmd, extra] of [['broadcast', { group: 'room' }], ['send', { id: 'eva' }], ['broadcast', {}]] as const) {
      const message = `${cmd}${'group' in extra ? '-room' : ''}-${i}`
      const reply = await b.ask({ cmd, message, ...extra })
      t.notOk('error' in reply, `${message} accepted by B`)
      missed.push(message)
    }
  }
  const second = await ProtocolPeer.open(`${b.url}/ws/eva`, { token: first.welcome!.token!, positions: first.positionsNow() })
  await second.until(() => second.messages.length >= missed.length)
  t.match(second.welcome!.resume, { outcome: 'full', stateRestored: true, replayed: missed.length, missed: 0, historyLost: false })
  t.same(second.texts, missed, 'every missed message, in publish order, once')
  t.same(second.messages.filter((m) => m.duplicate), [], 'no duplicate')
  t.same(await b.ask({ cmd: 'state', id: 'eva', key: 'cart' }), { userData: { items: [1, 2] }, groups: ['room'] }, 'user data and groups were written through')
  await b.ask({ cmd: 'broadcast', message: 'live', group: 'room' })
  await second.until(() => second.texts.at(-1) === 'live')
  t.pass('the restored group delivers live messages')
  t.same(second.malformed, [])
  second.socket.terminate()
})

void t.test('a StabilizedWebSocket behind a balancer resumes on B after A was SIGKILLed', async (t) => {
  const redis = await startRedisServer()
  t.teardown(redis.stop)
  const keyPrefix = `c-${randomUUID()}:`
  const a = await startInstanceProcess(t, redis.url, keyPrefix, options, adapterOptions)
  const b = await startInstanceProcess(t, redis.url, keyPrefix, options, adapterOptions)
  const balancer = await startBalancer([a.port])
  t.teardown(balancer.close)

  const client = new StabilizedWebSocket(`${balancer.url}/ws/kim`, { WebSocket, minDelay: 200, initialDelay: 400 })
  t.teardown(() => { client.close() })
  const got: string[] = []
  const resumes: ResumeOutcome[] = []
  client.addEventListener('message', (event) => { got.push(String((event as unknown as { data: unknown }).data)) })
  client.addEventListener('resumed', (event) => { resumes.push((event as unknown as { resume: ResumeOutcome }).resume) })
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN)
  await a.ask({ cmd: 'join', id: 'kim', group: 'desk' })
  await a.ask({ cmd: 'setUserData', id: 'kim', key: 'seat', value: 12 })
  await a.ask({ cmd: 'send', id: 'kim', message: 'on A' })
  await waitFor(() => got.length === 1)

  balancer.backends = [a.port, b.port] // A refuses once dead: the balancer moves on to B
  await a.kill()
  const expected = ['on A']
  for (let i = 0; i < 4; i++) {
    await b.ask({ cmd: 'broadcast', message: `desk-${i}`, group: 'desk' })
    await b.ask({ cmd: 'send', id: 'kim', message: `direct-${i}` })
    expected.push(`desk-${i}`, `direct-${i}`)
  }
  await waitFor(() => resumes.length === 1 && got.length >= expected.length, 10_000)
  t.match(resumes[0], { outcome: 'full', stateRestored: true, missed: 0, historyLost: false })
  t.same(got, expected, 'every message once, in order, whether replayed or live')
  t.same(await b.ask({ cmd: 'state', id: 'kim', key: 'seat' }), { userData: 12, groups: ['desk'] })
  await b.ask({ cmd: 'broadcast', message: 'after', group: 'desk' })
  await waitFor(() => got.at(-1) === 'after')
  t.pass('the group followed the session to B')
})

void t.test('a SIGKILLed instance leaves the cluster count of GET /ws-stats within seconds', async (t) => {
  const redis = await startRedisServer()
  t.teardown(redis.stop)
  const keyPrefix = `s-${randomUUID()}:`
  const a = await startInstanceProcess(t, redis.url, keyPrefix, options, adapterOptions)
  const b = await startInstanceProcess(t, redis.url, keyPrefix, options, adapterOptions)
  const peers = await Promise.all([ProtocolPeer.open(`${a.url}/ws/x1`), ProtocolPeer.open(`${a.url}/ws/x2`), ProtocolPeer.open(`${b.url}/ws/y1`)])
  t.teardown(() => { for (const peer of peers) peer.socket.terminate() })
  await untilAsync(async () => (await clusterStats(b.httpUrl))?.connections === 3, 'B to count 3 connections')
  t.same(await clusterStats(b.httpUrl), { instances: 2, connections: 3 })
  await a.kill()
  await untilAsync(async () => (await clusterStats(b.httpUrl))?.instances === 1, 'the dead instance to leave', 4 * instanceTtl)
  t.same(await clusterStats(b.httpUrl), { instances: 1, connections: 1 }, "the dead instance's connections left with it")
})

void t.test('Redis killed and restarted empty mid-traffic', async (t) => {
  const redis = await startRedisServer()
  t.teardown(redis.stop)
  const keyPrefix = `r-${randomUUID()}:`
  const a = await startInstanceProcess(t, redis.url, keyPrefix, options, adapterOptions)
  const b = await startInstanceProcess(t, redis.url, keyPrefix, options, adapterOptions)
  const onA = await ProtocolPeer.open(`${a.url}/ws/ann`)
  const onB = await ProtocolPeer.open(`${b.url}/ws/ben`)
  const leaving = await ProtocolPeer.open(`${a.url}/ws/lea`)
  t.teardown(() => { onA.socket.terminate(); onB.socket.terminate() })
  for (let i = 0; i < 3; i++) t.match(await b.ask({ cmd: 'broadcast', message: `before-${i}` }), { published: true })
  await Promise.all([onA, onB, leaving].map(async (peer) => { await peer.until(() => peer.messages.length === 3) }))
  const oldEpoch = onA.positions['*'][0]
  // lea goes away before Redis does; it comes back once Redis lost everything.
  leaving.socket.terminate()
  await untilAsync(async () => ((await a.ask({ cmd: 'connections' })).ids as string[]).length === 1, 'A to see lea gone')

  await redis.kill()
  const down = await guarded(b.ask({ cmd: 'broadcast', message: 'while down' }), 'a broadcast while Redis is down')
  t.match(down, { total: 1, sent: 1, published: false }, 'an honest result: delivered here, not published')
  await onB.until(() => onB.texts.includes('while down'))
  t.match(onB.messages.at(-1), { stream: '', data: 'while down' }, 'the local client is served, without a position')
  t.notOk(onA.texts.includes('while down'), 'nothing reached the other instance')

  await redis.restart()
  let back: Record<string, unknown> = {}
  await untilAsync(async () => {
    back = await b.ask({ cmd: 'broadcast', message: `after-${Date.now()}` })
    return back.published === true
  }, 'publishing to work again', 20_000)
  await onA.until(() => onA.messages.some((m) => m.stream === '*' && m.epoch !== oldEpoch), 10_000)
  t.pass('delivery across instances came back by itself')
  const fresh = onA.messagesOf('*').filter((m) => m.epoch !== oldEpoch).map((m) => m.seq)
  t.ok(fresh.every((seq, i) => i === 0 || seq > fresh[i - 1]), `the new epoch in order, once (${fresh.join(',')})`)

  const resumed = await ProtocolPeer.open(`${b.url}/ws/lea`, { token: leaving.welcome!.token!, positions: leaving.positionsNow() })
  t.teardown(() => { resumed.socket.terminate() })
  t.match(resumed.welcome!.resume, { outcome: 'partial', historyLost: true }, 'the lost history is reported, never a silent gap')
})
