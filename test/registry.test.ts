import t from 'tap'
import { once } from 'node:events'
import { CloseCode } from '../lib/index.js'
import { buildApp, closeOf, listen, nextMessage, openClient, waitFor } from './fixtures/server.js'
import { closeCodeIn, openRawPeer } from './fixtures/raw-peer.js'

async function appWithConnections (options = {}) {
  const app = await buildApp(options)
  const url = await listen(app)
  return { app, url }
}

for (const oldSocketEnds of ['by a protocol error', 'by its close timeout (terminate)', 'by a reset']) {
  void t.test(`a replaced connection ended ${oldSocketEnds} never removes or closes its replacement`, async (t) => {
    const { app, url } = await appWithConnections({ closeTimeout: 300 })
    t.teardown(() => app.close())
    // The old peer never answers close frames: its cleanup comes late, after the replacement is in use.
    const old = await openRawPeer(url, '/ws/bob')
    await waitFor(() => app.stabilizer.getConnectionCount() === 1)
    const oldConnection = app.stabilizer.getConnection('bob')!

    const replacement = await openClient(`${url}/ws/bob`)
    await waitFor(() => app.stabilizer.getConnection('bob') !== oldConnection && app.stabilizer.getConnection('bob') !== undefined)
    const current = app.stabilizer.getConnection('bob')!
    t.equal(oldConnection.state, 'closing', 'the old connection is closing')
    await waitFor(() => closeCodeIn(old.received()) !== undefined)
    t.equal(closeCodeIn(old.received()), CloseCode.REPLACED, 'the old peer was sent 4500')
    t.ok(app.stabilizer.join('bob', 'room'), 'the replacement joins a group')

    if (oldSocketEnds === 'by a protocol error') old.sendUnmaskedFrame()
    if (oldSocketEnds === 'by a reset') old.socket.resetAndDestroy()
    // (close timeout: nothing to do, the server terminates the old socket after 300 ms)
    await waitFor(() => oldConnection.state === 'closed')

    t.equal(app.stabilizer.getConnection('bob'), current, 'the replacement is still the connection of bob')
    t.equal(current.state, 'open')
    t.same(app.stabilizer.getGroups('bob'), ['room'], 'its groups are intact')
    t.equal(app.stabilizer.getConnectionCount(), 1)
    const message = nextMessage(replacement)
    t.same(await app.stabilizer.broadcast('still here', { group: 'room' }), { total: 1, sent: 1, failed: 0, skipped: 0, dropped: 0, published: true })
    t.equal(await message, 'still here')
    t.equal(await app.stabilizer.sendToClient('bob', 'direct'), true)
    t.equal(app.stabilizer.getStats().closedByCause.replaced, 1)
    old.destroy()
    replacement.terminate()
  })
}

void t.test('the replaced client sees 4500 and a terminal close code', async (t) => {
  const { app, url } = await appWithConnections()
  t.teardown(() => app.close())
  const first = await openClient(`${url}/ws/carl`)
  const closed = closeOf(first)
  const second = await openClient(`${url}/ws/carl`)
  t.same(await closed, { code: CloseCode.REPLACED, reason: 'replaced by a newer connection' })
  second.terminate()
})

void t.test('groups: join, leave, getGroups; membership is dropped on disconnect', async (t) => {
  const { app, url } = await appWithConnections()
  t.teardown(() => app.close())
  const a = await openClient(`${url}/ws/a`)
  const b = await openClient(`${url}/ws/b`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 2)
  t.ok(app.stabilizer.join('a', 'red'))
  t.notOk(app.stabilizer.join('a', 'red'), 'joining twice changes nothing')
  t.ok(app.stabilizer.join('a', 'blue'))
  t.ok(app.stabilizer.join('b', 'red'))
  t.notOk(app.stabilizer.join('nobody', 'red'), 'an unknown client joins nothing')
  t.same(app.stabilizer.getGroups('a').sort(), ['blue', 'red'])
  t.same(app.stabilizer.getGroups('nobody'), [])
  t.equal(app.stabilizer.getStats().groups, 2)
  t.ok(app.stabilizer.leave('a', 'blue'))
  t.notOk(app.stabilizer.leave('a', 'blue'))
  t.notOk(app.stabilizer.leave('nobody', 'blue'))
  t.equal(app.stabilizer.getStats().groups, 1, 'an empty group is forgotten')
  t.equal((await app.stabilizer.broadcast('to red', { group: 'red' })).total, 2)
  const closed = once(a, 'close')
  a.close(1000)
  await closed
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  t.equal((await app.stabilizer.broadcast('to red', { group: 'red' })).total, 1, 'a left red when it disconnected')
  t.same(app.stabilizer.getGroups('a'), [])
  b.terminate()
})

void t.test('disconnect is idempotent and waits for the close', async (t) => {
  const { app, url } = await appWithConnections()
  t.teardown(() => app.close())
  const ws = await openClient(`${url}/ws/dan`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const closed = closeOf(ws)
  const [first, second] = await Promise.all([
    app.stabilizer.disconnect('dan', 4001, 'kicked'),
    app.stabilizer.disconnect('dan')
  ])
  t.equal(first, true)
  t.equal(second, false)
  t.same(await closed, { code: 4001, reason: 'kicked' })
  t.equal(await app.stabilizer.disconnect('dan'), false)
  t.equal(await app.stabilizer.disconnect('never-was'), false)
  t.same(app.stabilizer.getStats().closedByCause, { server_disconnect: 1 })
  t.same(app.stabilizer.getStats().closedByCode, { 4001: 1 })
})

void t.test('disconnect rejects an invalid close code and leaves the connection open', async (t) => {
  const { app, url } = await appWithConnections()
  t.teardown(() => app.close())
  const ws = await openClient(`${url}/ws/eve`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  await t.rejects(app.stabilizer.disconnect('eve', 1005), TypeError)
  t.equal(app.stabilizer.getConnection('eve')?.state, 'open')
  ws.terminate()
})

void t.test('disconnect terminates a peer that never answers after closeTimeout', async (t) => {
  const { app, url } = await appWithConnections({ closeTimeout: 200 })
  t.teardown(() => app.close())
  const peer = await openRawPeer(url, '/ws/frozen')
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const connection = app.stabilizer.getConnection('frozen')!
  t.equal(await app.stabilizer.disconnect('frozen', 4002, 'bye'), true)
  t.equal(connection.state, 'closed')
  t.equal(closeCodeIn(peer.received()), 4002)
  t.same(app.stabilizer.getStats().closedByCode, { 1006: 1 }, 'a terminated socket ends with 1006')
  peer.destroy()
})

void t.test('user data: set, get, delete, sizes from the serialized value, gone with the connection', async (t) => {
  const { app, url } = await appWithConnections()
  t.teardown(() => app.close())
  const ws = await openClient(`${url}/ws/ua`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const nested = { deep: { list: Array.from({ length: 1000 }, (_, i) => ({ i, name: `item-${i}` })) } }
  app.stabilizer.setUserData('ua', 'profile', nested)
  t.same(app.stabilizer.getUserData('ua', 'profile'), nested)
  const expected = Buffer.byteLength('profile') + Buffer.byteLength(JSON.stringify(nested))
  t.equal(app.stabilizer.getMemoryUsage().userDataBytes, expected, 'a nested value counts its whole serialized size')
  app.stabilizer.setUserData('ua', 'profile', 'small')
  t.equal(app.stabilizer.getMemoryUsage().userDataBytes, Buffer.byteLength('profile') + 7, 'an overwrite replaces the old size')
  app.stabilizer.setUserData('ua', 'profile', undefined)
  app.stabilizer.setUserData('ua', 'missing', undefined)
  t.equal(app.stabilizer.getUserData('ua', 'profile'), undefined)
  t.equal(app.stabilizer.getMemoryUsage().userDataBytes, 0)
  t.throws(() => app.stabilizer.setUserData('ua', 'f', () => 1), TypeError)
  t.throws(() => app.stabilizer.setUserData('nobody', 'k', 1), { code: 'FST_WS_STABILIZER_CONNECTION_NOT_FOUND' })
  t.equal(app.stabilizer.getUserData('nobody', 'k'), undefined)
  app.stabilizer.setUserData('ua', 'k', 'v')
  t.equal(app.stabilizer.getMemoryUsage().averageBytesPerConnection, 4, 'k + "v"')
  const closed = once(ws, 'close')
  ws.close(1000)
  await closed
  await waitFor(() => app.stabilizer.getStats().totalDisconnections === 1)
  t.same(app.stabilizer.getMemoryUsage(), { connections: 0, userDataBytes: 0, bufferedBytes: 0, retainedSessionBytes: 0, retainedSessions: 0, averageBytesPerConnection: 0 })
})

// The registry alone: its indexes and group events, with connections that are never opened
// (the registry does not touch their sockets).
void t.test('registry: removal by connection object, the group index and its events', async (t) => {
  const { Registry } = await import('../lib/registry.js')
  const { Connection } = await import('../lib/connection.js')
  const events: string[] = []
  const registry = new Registry({ opened: (group) => events.push(`+${group}`), closed: (group) => events.push(`-${group}`) })
  const make = (id: string): InstanceType<typeof Connection> => new Connection(id, undefined as never, {}, undefined, Date.now(), false)

  const first = make('ann')
  t.equal(registry.add(first), undefined, 'a first connection replaces nothing')
  t.ok(registry.join(first, 'room'))
  t.notOk(registry.join(first, 'room'), 'joining twice changes nothing')
  t.same(events, ['+room'], 'the first member opens the group')
  const second = make('ann')
  t.equal(registry.add(second), first, 'a second connection for the id returns the one it replaced')
  t.equal(registry.get('ann'), second)
  t.same(events, ['+room', '-room'], 'the replaced connection left the group index: its last member is gone')
  t.same([...first.groups], ['room'], 'but keeps its own list, for the session to take over')
  t.equal(registry.live.size, 2, 'both are live until their sockets close')

  registry.remove(first) // the stale socket's late cleanup
  t.equal(registry.get('ann'), second, 'never removes its replacement')
  t.equal(registry.size, 1)
  t.equal(registry.live.size, 1)

  t.ok(registry.join(second, 'room'))
  const bob = make('bob')
  registry.add(bob)
  t.ok(registry.join(bob, 'room'))
  t.same([...registry.members('room')!].map((c) => c.id), ['ann', 'bob'])
  t.equal(registry.groupCount, 1)
  t.ok(registry.leave(second, 'room'))
  t.notOk(registry.leave(second, 'room'), 'leaving twice changes nothing')
  t.same([...registry.members('room')!].map((c) => c.id), ['bob'])
  registry.deactivate(bob)
  t.equal(registry.members('room'), undefined, 'a deactivated last member closes the group')
  t.same(events, ['+room', '-room', '+room', '-room'])
  t.same([...registry.ids()], ['ann'])
})
