import t from 'tap'
import Fastify from 'fastify'
import { once } from 'node:events'
import { WebSocket } from 'ws'
import stabilizer, { type StabilizerOptions } from '../lib/index.js'
import { listen, openClient, refusal, waitFor } from './fixtures/server.js'
import { openRawPeer } from './fixtures/raw-peer.js'

// Client IPs come from X-Forwarded-For (trustProxy): header values from the documentation
// range 192.0.2.0/24, so that each case has an IP of its own. No traffic goes anywhere else.
const from = (ip: string) => ({ headers: { 'x-forwarded-for': ip } })

async function admissionApp (options: StabilizerOptions) {
  const app = Fastify({ trustProxy: true })
  await app.register(stabilizer, options)
  app.get<{ Params: { clientId: string } }>('/ws/:clientId', { websocket: true }, () => {})
  app.get('/throws/:clientId', { websocket: true }, () => { throw new Error('handler failure') })
  const url = await listen(app)
  return { app, url }
}

void t.test('allowedOrigins: another origin gets 403 before any upgrade; the listed one and none at all are admitted', async (t) => {
  const { app, url } = await admissionApp({ allowedOrigins: ['https://app.example.com'] })
  t.teardown(() => app.close())
  let upgraded = 0
  app.websocketServer.on('connection', () => { upgraded++ })
  const refused = await refusal(`${url}/ws/evil`, { origin: 'https://evil.example.net' })
  t.equal(refused.statusCode, 403)
  t.match(JSON.parse(refused.body), { code: 'FST_WS_STABILIZER_ORIGIN_NOT_ALLOWED' })
  t.equal(upgraded, 0, 'never upgraded')
  const good = await openClient(`${url}/ws/good`, { origin: 'https://app.example.com' })
  const native = await openClient(`${url}/ws/native`) // no Origin header: not a browser
  t.equal(app.stabilizer.getConnectionCount(), 2)
  t.equal(app.stabilizer.getStats().rejectedUpgrades.origin, 1)
  good.terminate()
  native.terminate()
})

void t.test('maxConnectionsPerIp counts each client IP (trustProxy) and answers 429 with Retry-After', async (t) => {
  const { app, url } = await admissionApp({ maxConnectionsPerIp: 2 })
  t.teardown(() => app.close())
  const a = [await openClient(`${url}/ws/a1`, from('192.0.2.1')), await openClient(`${url}/ws/a2`, from('192.0.2.1'))]
  const refused = await refusal(`${url}/ws/a3`, from('192.0.2.1'))
  t.equal(refused.statusCode, 429)
  t.equal(refused.headers['retry-after'], '5')
  t.match(JSON.parse(refused.body), { code: 'FST_WS_STABILIZER_TOO_MANY_CONNECTIONS' })
  const b = await openClient(`${url}/ws/b1`, from('192.0.2.2'))
  t.equal(app.stabilizer.getConnection('b1')?.remoteAddress, '192.0.2.2')
  const again = await openClient(`${url}/ws/a1`, from('192.0.2.1'))
  t.pass('a client coming back under its own id is admitted at the cap (it replaces itself)')
  t.equal(app.stabilizer.getStats().rejectedUpgrades.ipLimit, 1)
  for (const ws of [...a, b, again]) ws.terminate()
})

void t.test('connectRatePerIp: the 6th upgrade in a second gets 429 with Retry-After; later ones pass', async (t) => {
  const { app, url } = await admissionApp({ connectRatePerIp: 5 })
  t.teardown(() => app.close())
  const clients = []
  for (let i = 0; i < 5; i++) clients.push(await openClient(`${url}/ws/r${i}`, from('192.0.2.3')))
  const refused = await refusal(`${url}/ws/r5`, from('192.0.2.3'))
  t.equal(refused.statusCode, 429)
  t.equal(refused.headers['retry-after'], '1')
  clients.push(await openClient(`${url}/ws/other`, from('192.0.2.4')))
  await new Promise((resolve) => setTimeout(resolve, 1100))
  clients.push(await openClient(`${url}/ws/r5`, from('192.0.2.3')))
  t.equal(app.stabilizer.getStats().rejectedUpgrades.connectRate, 1)
  for (const ws of clients) ws.terminate()
})

void t.test('the per-IP slot is released exactly once, whatever the close path', async (t) => {
  const { app, url } = await admissionApp({
    maxConnectionsPerIp: 2,
    heartbeatInterval: 300,
    heartbeatTimeout: 150,
    closeTimeout: 200,
    maxTotalMemory: 100,
    inboundMessageRate: 20
  })
  t.teardown(() => app.close())

  /**
   * With a witness connection from the same IP open throughout, after the path's connection
   * closed exactly one more is admitted and the next is refused: a release that happened
   * twice would have freed the witness's slot too, and let both in.
   */
  async function releasedOnce (ip: string, path: string): Promise<void> {
    await waitFor(() => app.stabilizer.getConnectionCount() === 1 && app.stabilizer.getStats().totalDisconnections === app.stabilizer.getStats().totalConnections - 1, 3000)
    const next = await openClient(`${url}/ws/check-${path}`, from(ip))
    t.equal((await refusal(`${url}/ws/extra-${path}`, from(ip))).statusCode, 429, `${path}: released once`)
    const closed = once(next, 'close')
    next.close(1000)
    await closed
  }

  const paths: Record<string, (ip: string) => Promise<void>> = {
    'client close': async (ip) => { const ws = await openClient(`${url}/ws/p`, from(ip)); ws.close(1000) },
    'client reset': async (ip) => { const ws = await openClient(`${url}/ws/p`, from(ip)); ws.terminate() },
    'server disconnect': async (ip) => {
      await openClient(`${url}/ws/p`, from(ip))
      await waitFor(() => app.stabilizer.getConnectionCount() === 2)
      await app.stabilizer.disconnect('p', 4000, 'bye')
    },
    replacement: async (ip) => {
      const first = await openClient(`${url}/ws/p`, from(ip))
      const second = await openClient(`${url}/ws/p`, from(ip))
      await once(first, 'close')
      second.close(1000)
    },
    'protocol error': async () => {
      const peer = await openRawPeer(url, '/ws/p') // (no X-Forwarded-For: counted as 127.0.0.1)
      peer.sendUnmaskedFrame()
    },
    'handler error': async (ip) => { await openClient(`${url}/throws/p`, from(ip)) },
    'heartbeat timeout': async () => {
      await openRawPeer(url, '/ws/p') // never answers a ping
      await waitFor(() => app.stabilizer.getStats().heartbeat.timeouts >= 1, 3000)
    },
    'rate limit': async (ip) => {
      const ws = await openClient(`${url}/ws/p`, from(ip))
      for (let i = 0; i < 50; i++) ws.send('x')
    },
    'memory eviction': async (ip) => {
      await openClient(`${url}/ws/p`, from(ip))
      const writer = await openClient(`${url}/ws/writer`, from('192.0.2.250'))
      await waitFor(() => app.stabilizer.getConnectionCount() === 3)
      app.stabilizer.setUserData('p', 'k', 'x'.repeat(60))
      app.stabilizer.setUserData('writer', 'k', 'x'.repeat(60)) // evicts p
      await waitFor(() => app.stabilizer.getConnection('p') === undefined)
      writer.close(1000)
    }
  }
  let n = 10
  for (const [path, run] of Object.entries(paths)) {
    const ip = path === 'protocol error' || path === 'heartbeat timeout' ? '127.0.0.1' : `192.0.2.${n++}`
    const witness = await openClient(`${url}/ws/witness-${n}`, path === 'protocol error' || path === 'heartbeat timeout' ? {} : from(ip))
    await waitFor(() => app.stabilizer.getConnectionCount() === 1)
    await run(ip)
    await releasedOnce(ip, path.replace(/ /g, '-'))
    const closed = once(witness, 'close')
    witness.close(1000)
    await closed
    await waitFor(() => app.stabilizer.getConnectionCount() === 0)
  }
  await app.close()
  t.equal(app.stabilizer.perIp.trackedIps, 0, 'no IP is counted after shutdown')
})

void t.test('a client that leaves during identify() gives its per-IP slot back', async (t) => {
  const { app, url } = await admissionApp({
    maxConnectionsPerIp: 1,
    identify: async (request) => { await new Promise((resolve) => setTimeout(resolve, 50)); return String(request.headers['x-id']) }
  })
  t.teardown(() => app.close())
  const leaving = new WebSocket(`${url}/ws/x`, { headers: { 'x-id': 'gone' } })
  leaving.on('error', () => {})
  await new Promise((resolve) => setTimeout(resolve, 10))
  leaving.terminate()
  await new Promise((resolve) => setTimeout(resolve, 100))
  const ws = await openClient(`${url}/ws/x`, { headers: { 'x-id': 'stays' } })
  t.equal(app.stabilizer.getConnectionCount(), 1)
  ws.terminate()
})
