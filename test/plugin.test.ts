import t from 'tap'
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import { Writable } from 'node:stream'
import { once } from 'node:events'
import { WebSocket } from 'ws'
import stabilizer, { CloseCode, type StabilizedConnection } from '../lib/index.js'
import { buildApp, closeOf, listen, openClient, refusal, waitFor, httpUrl } from './fixtures/server.js'

void t.test('registers @fastify/websocket itself and passes maxMessageSize through (1009)', async (t) => {
  const app = await buildApp({ maxMessageSize: 64 })
  t.teardown(() => app.close())
  t.ok(app.hasPlugin('@fastify/websocket'))
  const url = await listen(app)
  const ws = await openClient(`${url}/ws/a`)
  const closed = closeOf(ws)
  ws.send('x'.repeat(65))
  t.same(await closed, { code: CloseCode.MESSAGE_TOO_BIG, reason: 'message too big' }, 'the peer learns which limit it hit')
  await waitFor(() => app.stabilizer.getStats().totalDisconnections === 1)
  t.same(app.stabilizer.getStats().closedByCode, { 1009: 1 })
  t.same(app.stabilizer.getStats().closedByCause, { message_too_big: 1 })
})

void t.test('compression negotiates permessage-deflate', async (t) => {
  for (const compression of [true, false]) {
    const app = await buildApp({ compression })
    const url = await listen(app)
    const ws = new WebSocket(`${url}/ws/a`, { perMessageDeflate: true })
    const [response] = await once(ws, 'upgrade') as [import('node:http').IncomingMessage]
    t.equal(/permessage-deflate/.test(String(response.headers['sec-websocket-extensions'] ?? '')), compression, `compression: ${compression}`)
    ws.terminate()
    await app.close()
  }
})

void t.test('works when the app registered @fastify/websocket first, and still closes with 1012 (never 1005)', async (t) => {
  const app = Fastify()
  await app.register(websocket)
  await app.register(stabilizer)
  let seen: StabilizedConnection | null = null
  app.get('/ws/:clientId', { websocket: true }, (_socket, request) => { seen = request.wsConnection })
  const url = await listen(app)
  const ws = await openClient(`${url}/ws/first`)
  await waitFor(() => seen !== null)
  t.equal(seen!.id, 'first')
  t.equal(app.stabilizer.getConnection('first'), seen)
  const closed = closeOf(ws)
  await app.close()
  t.equal((await closed).code, CloseCode.SERVICE_RESTART)
})

void t.test('a route opted out with config.stabilizer=false is not registered; connect() registers it by hand', async (t) => {
  const app = Fastify()
  await app.register(stabilizer)
  const manual: StabilizedConnection[] = []
  app.get('/raw', { websocket: true, config: { stabilizer: false } }, (socket, request) => {
    t.equal(request.wsConnection, null)
    manual.push(app.stabilizer.connect('manual', socket, { source: 'raw' }))
  })
  const url = await listen(app)
  t.teardown(() => app.close())
  const ws = await openClient(`${url}/raw`)
  await waitFor(() => manual.length === 1)
  t.same(manual[0].metadata, { source: 'raw' })
  t.equal(app.stabilizer.getConnectionCount(), 1)
  const message = once(ws, 'message')
  t.equal(await app.stabilizer.sendToClient('manual', 'hi'), true)
  t.equal(String((await message)[0]), 'hi')
  t.throws(() => app.stabilizer.connect('again', manual[0].socket), TypeError, 'a socket is registered once')
})

void t.test('connect() refuses a socket that is not open and an invalid id', async (t) => {
  const app = Fastify()
  await app.register(stabilizer)
  let serverSocket: WebSocket | undefined
  app.get('/raw', { websocket: true, config: { stabilizer: false } }, (socket) => { serverSocket = socket })
  const url = await listen(app)
  t.teardown(() => app.close())
  const ws = await openClient(`${url}/raw`)
  await waitFor(() => serverSocket !== undefined)
  t.throws(() => app.stabilizer.connect('', serverSocket!), { code: 'FST_WS_STABILIZER_INVALID_CLIENT_ID' })
  t.throws(() => app.stabilizer.connect('x'.repeat(257), serverSocket!), { code: 'FST_WS_STABILIZER_INVALID_CLIENT_ID' })
  const closed = once(serverSocket!, 'close')
  ws.close(1000)
  await closed
  t.throws(() => app.stabilizer.connect('late', serverSocket!), TypeError)
})

void t.test('identity: the clientId param by default, a random id without one', async (t) => {
  const app = Fastify()
  await app.register(stabilizer)
  const ids: string[] = []
  app.get('/anon', { websocket: true }, (_socket, request) => { ids.push(request.wsConnection!.id) })
  const url = await listen(app)
  t.teardown(() => app.close())
  const a = await openClient(`${url}/anon`)
  const b = await openClient(`${url}/anon`)
  await waitFor(() => ids.length === 2)
  t.match(ids[0], /^[A-Za-z0-9_-]{22}$/, '128 random bits, 22 URL-safe characters')
  t.not(ids[0], ids[1])
  a.terminate()
  b.terminate()
})

void t.test('identity: identify(request), sync or async, may refuse with 401/403 before the upgrade', async (t) => {
  const app = Fastify()
  await app.register(stabilizer, {
    identify: async (request) => {
      const token = request.headers.authorization
      await new Promise((resolve) => setTimeout(resolve, 10))
      if (token === undefined) throw Object.assign(new Error('no credentials'), { statusCode: 401 })
      if (token === 'Bearer banned') throw Object.assign(new Error('banned'), { statusCode: 403 })
      if (token === 'Bearer empty') return ''
      return token.slice('Bearer '.length)
    }
  })
  const received: string[] = []
  let connections = 0
  app.websocketServer.on('connection', () => { connections++ })
  app.get('/chat', { websocket: true }, (socket, request) => {
    socket.on('message', (data) => received.push(`${request.wsConnection!.id}:${String(data)}`))
  })
  const url = await listen(app)
  t.teardown(() => app.close())

  t.equal((await refusal(`${url}/chat`)).statusCode, 401)
  t.equal((await refusal(`${url}/chat`, { headers: { authorization: 'Bearer banned' } })).statusCode, 403)
  const invalid = await refusal(`${url}/chat`, { headers: { authorization: 'Bearer empty' } })
  t.equal(invalid.statusCode, 400)
  t.match(JSON.parse(invalid.body), { code: 'FST_WS_STABILIZER_INVALID_CLIENT_ID' })
  t.equal(connections, 0, 'no refused request was upgraded')
  t.match(app.stabilizer.getStats().rejectedUpgrades, { identity: 2, clientId: 1 }, 'an invalid id is counted apart from the refusals of identify')

  // A message sent the moment the socket opens reaches the handler.
  const ws = new WebSocket(`${url}/chat`, { headers: { authorization: 'Bearer carol' } })
  ws.on('open', () => ws.send('first'))
  await waitFor(() => received.length === 1)
  t.same(received, ['carol:first'])
  ws.terminate()
})

void t.test('request.wsConnection is the registered connection; a plain GET on a websocket route is not upgraded', async (t) => {
  const app = Fastify()
  await app.register(stabilizer)
  let fromRequest: StabilizedConnection | null = null
  app.get('/ws/:clientId', { websocket: true }, (_socket, request) => { fromRequest = request.wsConnection })
  const url = await listen(app)
  t.teardown(() => app.close())
  const ws = await openClient(`${url}/ws/dave`)
  await waitFor(() => fromRequest !== null)
  t.equal(fromRequest, app.stabilizer.getConnection('dave'))
  t.equal(fromRequest!.state, 'open')
  t.equal(fromRequest!.remoteAddress, '127.0.0.1')
  const plain = await fetch(`${httpUrl(url)}/ws/dave`)
  t.equal(plain.status, 404)
  const head = await fetch(`${httpUrl(url)}/ws/dave`, { method: 'HEAD' })
  t.equal(head.status, 404)
  t.equal(app.stabilizer.getConnectionCount(), 1)
  ws.terminate()
})

void t.test('a handler that throws or rejects closes its socket with 1011 and logs the error', async (t) => {
  const lines: string[] = []
  const stream = new Writable({ write (chunk, _enc, done) { lines.push(String(chunk)); done() } })
  const app = Fastify({ logger: { level: 'info', stream } })
  await app.register(stabilizer)
  app.get('/sync', { websocket: true }, () => { throw new Error('sync boom') })
  app.get('/async', { websocket: true }, async () => { throw new Error('async boom') })
  const url = await listen(app)
  t.teardown(() => app.close())
  for (const path of ['sync', 'async']) {
    const ws = new WebSocket(`${url}/${path}`)
    const { code } = await closeOf(ws)
    t.equal(code, CloseCode.INTERNAL_ERROR, path)
  }
  await waitFor(() => app.stabilizer.getStats().totalDisconnections === 2)
  const errors = lines.map((line) => JSON.parse(line)).filter((entry) => entry.level === 50)
  t.equal(errors.length, 2)
  t.match(errors[0], { msg: 'websocket route handler failed', err: { message: 'sync boom' } })
  t.same(app.stabilizer.getStats().closedByCause, { handler_error: 2 })
})

void t.test('an opted-out route whose handler throws is closed with 1011 too', async (t) => {
  const app = Fastify()
  await app.register(stabilizer)
  app.get('/raw', { websocket: true, config: { stabilizer: false } }, () => { throw new Error('boom') })
  const url = await listen(app)
  t.teardown(() => app.close())
  t.equal((await closeOf(new WebSocket(`${url}/raw`))).code, CloseCode.INTERNAL_ERROR)
})

void t.test('logs: connect and disconnect at debug with client id and code, never the payload; logLevel applies', async (t) => {
  for (const logLevel of [undefined, 'warn'] as const) {
    const lines: Array<Record<string, unknown>> = []
    const stream = new Writable({ write (chunk, _enc, done) { lines.push(JSON.parse(String(chunk))); done() } })
    const app = await buildApp(logLevel === undefined ? {} : { logLevel }, { logger: { level: 'debug', stream } })
    const url = await listen(app)
    const ws = await openClient(`${url}/ws/erin`)
    ws.send('secret-payload')
    await waitFor(() => app.received.get('erin')?.length === 1)
    const closed = once(ws, 'close')
    ws.close(1000, 'bye')
    await closed
    await waitFor(() => app.stabilizer.getConnectionCount() === 0)
    await app.close()
    const ours = lines.filter((line) => line.plugin === 'fastify-websocket-stabilizer')
    if (logLevel === 'warn') {
      t.equal(ours.filter((line) => (line.level as number) < 40).length, 0, 'logLevel: warn silences debug and info')
    } else {
      t.match(ours.find((line) => line.msg === 'websocket connected'), { level: 20, clientId: 'erin' })
      t.match(ours.find((line) => line.msg === 'websocket disconnected'), { level: 20, clientId: 'erin', code: 1000, cause: 'client_closed' })
    }
    t.notOk(lines.some((line) => JSON.stringify(line).includes('secret-payload')), 'no payload in the logs')
  }
})

void t.test('stabilizedConnection(request) is the route\'s connection, and throws where there is none', async (t) => {
  const { stabilizedConnection } = await import('../lib/index.js')
  const app = Fastify()
  await app.register(stabilizer)
  let seen: string | undefined
  app.get('/ws/:clientId', { websocket: true }, (_socket, request) => { seen = stabilizedConnection(request).id })
  app.get('/plain', async (request) => {
    try {
      stabilizedConnection(request)
      return 'no throw'
    } catch (err) {
      return (err as { code: string }).code
    }
  })
  t.teardown(() => app.close())
  const url = await listen(app)
  const ws = await openClient(`${url}/ws/zed`)
  await waitFor(() => seen !== undefined)
  t.equal(seen, 'zed')
  t.equal((await app.inject('/plain')).body, 'FST_WS_STABILIZER_CONNECTION_NOT_FOUND')
  ws.terminate()
})
