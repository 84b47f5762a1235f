import t from 'tap'
import Fastify from 'fastify'
import { once } from 'node:events'
import stabilizer, { CloseCode } from '../lib/index.js'
import { buildApp, listen, openClient, refusal, waitFor, closeOf } from './fixtures/server.js'
import { sendUpgradeRequest } from './fixtures/raw-peer.js'

void t.test('maxConnections: the next upgrade gets 503 with Retry-After, and no socket is accepted', async (t) => {
  const app = await buildApp({ maxConnections: 2 })
  let upgraded = 0
  app.websocketServer.on('connection', () => { upgraded++ })
  const url = await listen(app)
  t.teardown(() => app.close())
  const a = await openClient(`${url}/ws/a`)
  const b = await openClient(`${url}/ws/b`)
  const refused = await refusal(`${url}/ws/c`)
  t.equal(refused.statusCode, 503)
  t.equal(refused.headers['retry-after'], '5')
  t.match(JSON.parse(refused.body), { code: 'FST_WS_STABILIZER_CONNECTION_LIMIT', statusCode: 503 })
  t.equal(upgraded, 2, 'the refused request was never upgraded')
  t.equal(app.stabilizer.getStats().rejectedUpgrades.connectionLimit, 1)

  // A client that comes back under its own id replaces itself: admitted at the limit.
  const aAgain = await openClient(`${url}/ws/a`)
  t.equal(app.stabilizer.getConnectionCount(), 2)

  const closed = once(b, 'close')
  b.close(1000)
  await closed
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const c = await openClient(`${url}/ws/c`)
  t.equal(app.stabilizer.getConnectionCount(), 2, 'a freed slot admits the next client')
  for (const ws of [a, aAgain, c]) ws.terminate()
})

void t.test('maxConnections holds under concurrent upgrades with a slow identify', async (t) => {
  const app = Fastify()
  await app.register(stabilizer, {
    maxConnections: 5,
    identify: async (request) => {
      await new Promise((resolve) => setTimeout(resolve, 30))
      return String(request.headers['x-client'])
    }
  })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  t.teardown(() => app.close())
  const attempts = Array.from({ length: 12 }, (_, i) => openClient(`${url}/ws`, { headers: { 'x-client': `c${i}` } }))
  const results = await Promise.allSettled(attempts)
  const opened = results.filter((r) => r.status === 'fulfilled')
  const refused = results.filter((r) => r.status === 'rejected' && (r.reason as { statusCode?: number }).statusCode === 503)
  t.equal(opened.length, 5)
  t.equal(refused.length, 7)
  t.equal(app.stabilizer.getConnectionCount(), 5)
  for (const r of opened) (r as PromiseFulfilledResult<import('ws').WebSocket>).value.terminate()
})

void t.test('a client that leaves during identify() gives its slot back', async (t) => {
  const app = Fastify()
  let identifying = 0
  await app.register(stabilizer, {
    maxConnections: 1,
    identify: async () => {
      identifying++
      await new Promise((resolve) => setTimeout(resolve, 50))
      return 'only'
    }
  })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  t.teardown(() => app.close())
  for (let i = 0; i < 4; i++) {
    const socket = await sendUpgradeRequest(url, '/ws')
    await waitFor(() => identifying === i + 1)
    // FIN (the server sees a half-closed socket) and RST (a destroyed one).
    if (i % 2 === 0) socket.destroy()
    else socket.resetAndDestroy()
  }
  await new Promise((resolve) => setTimeout(resolve, 80))
  const ws = await openClient(`${url}/ws`)
  t.equal(app.stabilizer.getConnectionCount(), 1, 'the slot was free')
  ws.terminate()
})

void t.test('manual connect() beyond maxConnections closes with 1013 and throws', async (t) => {
  const app = Fastify()
  await app.register(stabilizer, { maxConnections: 1 })
  const errors: unknown[] = []
  app.get('/raw', { websocket: true, config: { stabilizer: false } }, (socket, request) => {
    try {
      app.stabilizer.connect(String((request.query as { id: string }).id), socket)
    } catch (err) {
      errors.push(err)
    }
  })
  const url = await listen(app)
  t.teardown(() => app.close())
  const first = await openClient(`${url}/raw?id=one`)
  const second = await openClient(`${url}/raw?id=two`)
  const { code } = await closeOf(second)
  t.equal(code, CloseCode.TRY_AGAIN_LATER)
  t.match(errors, [{ code: 'FST_WS_STABILIZER_CONNECTION_LIMIT', closeCode: 1013 }])
  first.terminate()
})

void t.test('upgrades after a shutdown began get 503; manual connects are refused', async (t) => {
  const app = Fastify()
  await app.register(stabilizer)
  const errors: unknown[] = []
  app.get('/ws/:clientId', { websocket: true }, () => {})
  app.get('/raw', { websocket: true, config: { stabilizer: false } }, (socket) => {
    try { app.stabilizer.connect('manual', socket) } catch (err) { errors.push(err) }
  })
  const url = await listen(app)
  t.teardown(() => app.close())
  const report = await app.stabilizer.gracefulShutdown()
  t.same(report.total, 0)
  t.equal(app.stabilizer.state, 'closed')
  const refused = await refusal(`${url}/ws/late`)
  t.equal(refused.statusCode, 503)
  t.equal(refused.headers['retry-after'], '1')
  t.match(JSON.parse(refused.body), { code: 'FST_WS_STABILIZER_SHUTTING_DOWN' })
  const manual = await openClient(`${url}/raw`)
  t.equal((await closeOf(manual)).code, CloseCode.SERVICE_RESTART)
  t.match(errors, [{ code: 'FST_WS_STABILIZER_SHUTTING_DOWN' }])
  t.same(app.stabilizer.getStats().rejectedUpgrades, { connectionLimit: 0, shuttingDown: 2, identity: 0, clientId: 0, token: 0, origin: 0, ipLimit: 0, connectRate: 0 })
})
