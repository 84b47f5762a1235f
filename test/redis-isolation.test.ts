import t from 'tap'
import { randomUUID } from 'node:crypto'
import { redisAdapter } from '../lib/adapter/redis.js'
import { ProtocolPeer } from './fixtures/protocol-peer.js'
import { startRedisServer } from './fixtures/redis-server.js'
import { buildApp, listen, waitFor, type TestApp } from './fixtures/server.js'

// Two clusters of two instances each on one Redis, told apart only by keyPrefix, through the
// whole plugin. They share their secrets on purpose: only the prefix keeps them apart.

const secrets = ['i'.repeat(32) + '-isolation']

void t.test('two clusters with different keyPrefix on one Redis never see each other', async (t) => {
  const redis = await startRedisServer()
  t.teardown(redis.stop)
  async function cluster (name: string): Promise<Array<{ app: TestApp, url: string }>> {
    const keyPrefix = `${name}-${randomUUID()}:`
    const instances = []
    for (let i = 0; i < 2; i++) {
      const app = await buildApp({ secrets, heartbeatInterval: 0, adapter: redisAdapter({ redis: redis.url, keyPrefix, instanceTtl: 1500 }) })
      t.teardown(async () => { await app.close() })
      instances.push({ app, url: await listen(app) })
    }
    return instances
  }
  const [x1, x2] = await cluster('x')
  const [y1, y2] = await cluster('y')

  // The same client id in both clusters, on different instances of each.
  const inX = await ProtocolPeer.open(`${x2.url}/ws/sam`)
  const inY = await ProtocolPeer.open(`${y2.url}/ws/sam`)
  t.teardown(() => { inX.socket.terminate(); inY.socket.terminate() })
  x2.app.stabilizer.join('sam', 'room')
  y2.app.stabilizer.join('sam', 'room')
  await inX.until(() => inX.positions['g:room'] !== undefined)
  await inY.until(() => inY.positions['g:room'] !== undefined)
  t.equal(inX.closed, undefined, 'presence: a connection in y does not replace the one in x')

  await x1.app.stabilizer.broadcast('x to all')
  await x1.app.stabilizer.broadcast('x to room', { group: 'room' })
  t.equal(await x1.app.stabilizer.sendToClient('sam', 'x direct'), true)
  await y1.app.stabilizer.broadcast('y to all')
  await inX.until(() => inX.messages.length === 3)
  await inY.until(() => inY.messages.length === 1)
  t.same(inX.texts, ['x to all', 'x to room', 'x direct'], 'x sees only x')
  t.same(inY.texts, ['y to all'], 'y sees only y')
  t.equal(inY.positions['*'][1], 1, "y's stream holds one entry: x's are not in it")

  await waitFor(() => x1.app.stabilizer.getStats().cluster?.connections === 1 && y1.app.stabilizer.getStats().cluster?.connections === 1)
  t.same(x1.app.stabilizer.getStats().cluster, { instances: 2, connections: 1 }, 'each cluster counts only its own')
  t.same(y1.app.stabilizer.getStats().cluster, { instances: 2, connections: 1 })

  // Sessions and tokens: x's token verifies in y (same secrets), but y has neither x's session nor its redemption.
  x2.app.stabilizer.setUserData('sam', 'where', 'x')
  const token = inX.welcome!.token!
  const positions = inX.positionsNow()
  inX.socket.terminate()
  await waitFor(() => x2.app.stabilizer.getConnectionCount() === 0)
  inY.socket.terminate()
  await waitFor(() => y2.app.stabilizer.getConnectionCount() === 0)
  const resumedInY = await ProtocolPeer.open(`${y1.url}/ws/sam`, { token, positions })
  t.teardown(() => { resumedInY.socket.terminate() })
  t.match(resumedInY.welcome!.resume, { stateRestored: false, historyLost: true }, "y has no session of x's, and x's positions are not y's")
  t.equal(y1.app.stabilizer.getUserData('sam', 'where'), undefined)
  const resumedInX = await ProtocolPeer.open(`${x1.url}/ws/sam`, { token, positions })
  t.teardown(() => { resumedInX.socket.terminate() })
  t.match(resumedInX.welcome!.resume, { outcome: 'full', stateRestored: true }, 'the token redeemed in y is still unused in x, and x kept its session')
  t.equal(x1.app.stabilizer.getUserData('sam', 'where'), 'x')
})
