import t from 'tap'
import Fastify, { type FastifyServerOptions } from 'fastify'
import { Writable } from 'node:stream'
import { WebSocket as WsWebSocket } from 'ws'
import stabilizer, { redactReconnectToken, redactedRequestSerializer } from '../lib/index.js'
import { StabilizedWebSocket, type WebSocketConstructor } from '../lib/client/index.js'
import { httpUrl, listen, openClient, waitFor } from './fixtures/server.js'

// Tokens never reach the logs in the documented flows: Fastify's logger on (at trace level, so
// every line the plugin can write is captured), and the whole output searched for each token
// and for anything shaped like one.

const secrets = ['l'.repeat(32) + '-log-tests']
/** A reconnect token: base64url claims, a dot, a base64url HMAC-SHA256 (43 characters). */
const tokenShape = /[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{43}/

async function loggedApp (t: { teardown: (fn: () => unknown) => void }, logger: Exclude<FastifyServerOptions['logger'], boolean | undefined> = {}) {
  const lines: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString().split('\n').filter(Boolean))
      done()
    }
  })
  const app = Fastify({ logger: { level: 'trace', stream, ...logger } })
  await app.register(stabilizer, { secrets })
  app.get('/ws/:clientId', { websocket: true }, () => {})
  const url = await listen(app)
  // Closed before the log is read: the shutdown's own lines are searched too.
  let closed = false
  const close = async (): Promise<void> => {
    if (!closed) await app.close()
    closed = true
  }
  t.teardown(close)
  return { app, url, lines, close }
}

void t.test('the client library\'s flow (token in the subprotocol, a resume after a drop): no token in the log', async (t) => {
  const { app, url, lines, close } = await loggedApp(t)
  const sockets: WsWebSocket[] = []
  const Tracked = class extends WsWebSocket {
    constructor (address: string, protocols?: string | string[]) {
      super(address, protocols)
      sockets.push(this)
    }
  }
  const client = new StabilizedWebSocket(`${url}/ws/ann`, { WebSocket: Tracked as unknown as WebSocketConstructor, minDelay: 10, initialDelay: 20 })
  const resumed: unknown[] = []
  client.addEventListener('resumed', (event) => resumed.push(event))
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN)
  const offered = (client as unknown as { token: string | null }).token
  t.match(offered, tokenShape, 'the welcome gave the client a token')
  sockets[0].terminate() // a network drop: the client comes back with its token in Sec-WebSocket-Protocol
  await waitFor(() => resumed.length === 1)
  t.ok(sockets[1].protocol === 'stabilizer.v1', 'resumed over stabilizer.v1')
  const refreshed = (client as unknown as { token: string | null }).token
  client.close()
  await waitFor(() => app.stabilizer.getConnectionCount() === 0)
  await close()
  const log = lines.join('\n')
  t.ok(lines.some((line) => line.includes('incoming request')), 'requests were logged')
  t.notOk(log.includes(offered!), 'the token offered on resume is not in the log')
  t.notOk(log.includes(refreshed!), 'nor the one issued after it')
  t.notMatch(log, tokenShape, 'nothing shaped like a token')
})

void t.test('POST /reconnect-token: neither the token nor the connection secret is logged', async (t) => {
  const { app, url, lines, close } = await loggedApp(t)
  const ws = await openClient(`${url}/ws/bob`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const secret = app.stabilizer.getConnection('bob')!.connectionSecret
  const response = await fetch(`${httpUrl(url)}/reconnect-token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ clientId: 'bob', connectionSecret: secret }) })
  t.equal(response.status, 200)
  const { token } = await response.json() as { token: string }
  const refused = await fetch(`${httpUrl(url)}/reconnect-token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ clientId: 'bob', connectionSecret: 'not-it' }) })
  t.equal(refused.status, 403)
  ws.terminate()
  await close()
  const log = lines.join('\n')
  t.notOk(log.includes(token), 'the issued token is not in the log')
  t.notOk(log.includes(secret), 'nor the connection secret')
  t.notOk(log.includes('not-it'), 'nor a wrong secret')
})

void t.test('?token= in the URL: Fastify\'s default request log shows it (documented as unsafe); redactedRequestSerializer takes it out', async (t) => {
  for (const redacted of [false, true]) {
    const { app, url, lines, close } = await loggedApp(t, redacted ? { serializers: { req: redactedRequestSerializer } } : {})
    const first = await openClient(`${url}/ws/cat`)
    await waitFor(() => app.stabilizer.getConnectionCount() === 1)
    const token = app.stabilizer.generateReconnectToken('cat')
    first.terminate()
    await waitFor(() => app.stabilizer.getConnectionCount() === 0)
    const again = await openClient(`${url}/ws/cat?token=${token}`)
    await waitFor(() => app.stabilizer.getConnectionCount() === 1)
    again.terminate()
    await close()
    const log = lines.join('\n')
    if (redacted) {
      t.notOk(log.includes(token), 'redacted: the token is not in the log')
      t.ok(lines.some((line) => line.includes('/ws/cat?token=[redacted]')), 'the request is still logged, its token redacted')
    } else {
      t.ok(log.includes(token), 'default serializer: the URL, token included, is logged (why the README recommends the subprotocol)')
    }
  }
})

void t.test('redactReconnectToken takes out token and positions and keeps the rest of the URL', async (t) => {
  t.equal(redactReconnectToken('/ws/a?token=abc.def&x=1&positions=eyJ9#f'), '/ws/a?token=[redacted]&x=1&positions=[redacted]#f')
  t.equal(redactReconnectToken('/ws/a?x=1&token=abc'), '/ws/a?x=1&token=[redacted]')
  t.equal(redactReconnectToken('/ws/a?mytoken=1'), '/ws/a?mytoken=1', 'only the parameters the plugin reads')
  t.equal(redactReconnectToken('/ws/a'), '/ws/a')
})
