import t from 'tap'
import { MemoryAdapter, MemoryHub } from '../lib/index.js'
import { buildApp, closeOf, listen, openClient, waitFor, type TestApp } from './fixtures/server.js'
import { ProtocolPeer } from './fixtures/protocol-peer.js'

const secrets = ['h'.repeat(32) + '-memory-cluster']

/** Two apps in one process sharing one in-memory cluster, as two instances behind a balancer. */
async function twoInstances (t: { teardown: (fn: () => unknown) => void }) {
  const hub = new MemoryHub()
  const apps: TestApp[] = []
  const urls: string[] = []
  for (let i = 0; i < 2; i++) {
    const app = await buildApp({ secrets, adapter: new MemoryAdapter({ hub }) })
    apps.push(app)
    urls.push(await listen(app))
  }
  t.teardown(async () => { for (const app of apps) await app.close() })
  return { hub, a: apps[0], b: apps[1], urlA: urls[0], urlB: urls[1] }
}

function collect (socket: import('ws').WebSocket): string[] {
  const got: string[] = []
  socket.on('message', (data) => got.push(String(data)))
  return got
}

void t.test('broadcast, groups and direct sends reach clients on every instance, once', async (t) => {
  const { a, b, urlA, urlB } = await twoInstances(t)
  const onA = openClient(`${urlA}/ws/alice`)
  const onB = openClient(`${urlB}/ws/bob`)
  const [alice, bob] = await Promise.all([onA, onB])
  const gotA = collect(alice)
  const gotB = collect(bob)
  await waitFor(() => a.stabilizer.getConnectionCount() === 1 && b.stabilizer.getConnectionCount() === 1)

  t.match(await a.stabilizer.broadcast('hello all'), { total: 1, sent: 1, published: true }, 'counts are this instance\'s')
  b.stabilizer.join('bob', 'room')
  t.match(await a.stabilizer.broadcast('to room', { group: 'room' }), { total: 0, published: true })
  t.match(await b.stabilizer.broadcast('not bob', { exclude: 'bob' }), { total: 0 })
  t.equal(await a.stabilizer.sendToClient('bob', 'direct from A'), true, 'a client on another instance')
  t.equal(await a.stabilizer.sendToClient('carol', 'x'), false, 'nobody has carol')
  await waitFor(() => gotA.length === 2 && gotB.length === 3)
  t.same(gotA, ['hello all', 'not bob'])
  t.same(gotB, ['hello all', 'to room', 'direct from A'])
  t.same(a.stabilizer.getStats().cluster, { instances: 2, connections: 2 })

  t.equal(await a.stabilizer.disconnect('bob', 4000, 'from A'), true, 'disconnect reaches the instance holding the client')
  t.same(await closeOf(bob), { code: 4000, reason: 'from A' })
  alice.terminate()
})

void t.test('one connection per client id across instances: a newer one elsewhere replaces the older (4500)', async (t) => {
  const { a, b, urlA, urlB } = await twoInstances(t)
  const first = await openClient(`${urlA}/ws/dan`)
  await waitFor(() => a.stabilizer.getConnectionCount() === 1)
  const closed = closeOf(first)
  const second = await openClient(`${urlB}/ws/dan`)
  t.same(await closed, { code: 4500, reason: 'replaced by a newer connection' })
  await waitFor(() => a.stabilizer.getConnectionCount() === 0)
  t.equal(b.stabilizer.getConnectionCount(), 1)
  t.equal(await a.stabilizer.sendToClient('dan', 'to the new one'), true)
  const got = collect(second)
  await a.stabilizer.sendToClient('dan', 'again')
  await waitFor(() => got.length >= 1)
  t.ok(got.includes('again'))
  second.terminate()
})

void t.test('a session resumes on another instance with its data, groups and every message it missed', async (t) => {
  const { a, b, urlA, urlB } = await twoInstances(t)
  const first = await ProtocolPeer.open(`${urlA}/ws/eva`)
  a.stabilizer.join('eva', 'room')
  a.stabilizer.setUserData('eva', 'cart', { items: [1, 2] })
  await a.stabilizer.sendToClient('eva', 'seen')
  await first.until(() => first.messages.length === 1 && first.positions['g:room'] !== undefined)
  first.socket.terminate()
  await waitFor(() => a.stabilizer.getConnectionCount() === 0)
  await b.stabilizer.broadcast('to room while away', { group: 'room' })
  await b.stabilizer.sendToClient('eva', 'direct while away')
  await b.stabilizer.broadcast('to all while away')
  const second = await ProtocolPeer.open(`${urlB}/ws/eva`, { token: first.welcome!.token!, positions: first.positionsNow() })
  await second.until(() => second.messages.length === 3)
  t.match(second.welcome!.resume, { outcome: 'full', stateRestored: true, replayed: 3, missed: 0, historyLost: false })
  t.same(second.texts, ['to room while away', 'direct while away', 'to all while away'], 'in publish order')
  t.same(b.stabilizer.getUserData('eva', 'cart'), { items: [1, 2] })
  t.same(b.stabilizer.getGroups('eva'), ['room'])
  t.same(second.malformed, [])
  second.socket.terminate()
})

void t.test('a graceful shutdown of an instance keeps its sessions for the others (a rolling deploy)', async (t) => {
  const { a, b, urlA, urlB } = await twoInstances(t)
  const first = await ProtocolPeer.open(`${urlA}/ws/fay`)
  a.stabilizer.setUserData('fay', 'n', 7)
  await a.stabilizer.sendToClient('fay', 'before')
  await first.until(() => first.messages.length === 1)
  const closed = closeOf(first.socket)
  await a.close()
  t.equal((await closed).code, 1012)
  await b.stabilizer.sendToClient('fay', 'during the deploy')
  const second = await ProtocolPeer.open(`${urlB}/ws/fay`, { token: first.welcome!.token!, positions: first.positionsNow() })
  await second.until(() => second.messages.length === 1)
  t.match(second.welcome!.resume, { outcome: 'full', stateRestored: true, replayed: 1 })
  t.same(second.texts, ['during the deploy'])
  t.equal(b.stabilizer.getUserData('fay', 'n'), 7)
  t.same(b.stabilizer.getStats().cluster, { instances: 1, connections: 1 }, 'the stopped instance left the cluster')
  second.socket.terminate()
})

void t.test('a reconnect token is single-use across the cluster', async (t) => {
  const { a, b, urlA } = await twoInstances(t)
  const ws = await openClient(`${urlA}/ws/gus`)
  await waitFor(() => a.stabilizer.getConnectionCount() === 1)
  const token = a.stabilizer.generateReconnectToken('gus')
  t.equal(await b.stabilizer.validateReconnectToken(token), 'gus')
  await t.rejects(a.stabilizer.validateReconnectToken(token), { code: 'FST_WS_STABILIZER_INVALID_TOKEN' }, 'already used on B')
  ws.terminate()
})
