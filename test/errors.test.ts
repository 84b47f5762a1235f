import t from 'tap'
import * as api from '../lib/index.js'
import { errorCatalog } from '../lib/errors.js'

void t.test('every error is a WebSocketStabilizerError with an FST_WS_STABILIZER_ code', async (t) => {
  const codes = new Set<string>()
  for (const [name, ErrorClass] of Object.entries(errorCatalog)) {
    t.equal((api as Record<string, unknown>)[name], ErrorClass, `${name} is exported under its name`)
    const err = new ErrorClass('x', 1)
    t.ok(err instanceof api.WebSocketStabilizerError, `${name} extends the base`)
    t.ok(err instanceof Error)
    t.match(err.code, /^FST_WS_STABILIZER_[A-Z_]+$/)
    t.notOk(codes.has(err.code), `${err.code} is unique`)
    codes.add(err.code)
    t.type(err.statusCode, 'number')
  }
})

void t.test('errors that end a socket carry its close code', async (t) => {
  t.equal(new api.ConnectionLimitExceededError(10).closeCode, api.CloseCode.TRY_AGAIN_LATER)
  t.equal(new api.ShutdownError().closeCode, api.CloseCode.SERVICE_RESTART)
  t.equal(new api.ConnectionNotFoundError('a').closeCode, undefined)
  t.equal(new api.ConnectionLimitExceededError(10).message, 'Connection limit of 10 reached')
})

void t.test('close-code table follows the ranges', async (t) => {
  for (const row of api.closeCodeTable) {
    t.equal(api.shouldReconnect(row.code), row.reconnect, `${row.code} ${row.name}`)
    if (row.code >= 4000 && row.code < 4500) t.ok(row.reconnect, `${row.code} is in the reconnect range`)
    if (row.code >= 4500 && row.code < 5000) t.notOk(row.reconnect, `${row.code} is in the terminal range`)
  }
  t.ok(api.shouldReconnect(4123), 'unknown 4000–4499 reconnects')
  t.notOk(api.shouldReconnect(4777), 'unknown 4500–4999 does not')
  t.ok(api.shouldReconnect(1005), 'no status: transient')
  t.notOk(api.shouldReconnect(1008), 'policy violation: terminal')
  t.notOk(api.shouldReconnect(1003), 'unsupported data: terminal')
})

void t.test('POST /reconnect-token refusals say what is needed, and its rate limit has a code of its own', async (t) => {
  const { buildApp, httpUrl, listen, openClient, waitFor } = await import('./fixtures/server.js')
  const app = await buildApp({ secrets: ['e'.repeat(40)], tokenRequestsPerMinute: 2 })
  t.teardown(() => app.close())
  const url = await listen(app)
  const ws = await openClient(`${url}/ws/eve`)
  t.teardown(() => ws.terminate())
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const post = async (body: unknown) => await fetch(`${httpUrl(url)}/reconnect-token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const bare = await post({ clientId: 'eve' })
  t.equal(bare.status, 403)
  t.match(await bare.json(), { code: 'FST_WS_STABILIZER_TOKEN_REQUEST_FORBIDDEN', message: /send "connectionSecret".*request\.wsConnection\.connectionSecret.*"secret" in the welcome/ })
  const wrong = await post({ clientId: 'eve', connectionSecret: 'guess' })
  t.match(await wrong.json(), { code: 'FST_WS_STABILIZER_TOKEN_REQUEST_FORBIDDEN', message: /"connectionSecret" is not the secret of an open connection of this client id/ })
  const limited = await post({ clientId: 'eve' })
  t.equal(limited.status, 429)
  t.ok(Number(limited.headers.get('retry-after')) >= 1, 'with Retry-After')
  t.match(await limited.json(), { code: 'FST_WS_STABILIZER_TOO_MANY_TOKEN_REQUESTS', message: /at most 2 per minute, retry in \d+ s/ })
})

void t.test('with an identify hook, a refused token request says the identity did not match', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { httpUrl, listen, openClient, waitFor } = await import('./fixtures/server.js')
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(api.default, { secrets: ['e'.repeat(40)], identify: (request) => String(request.headers['x-user']) })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  const ws = await openClient(`${url}/ws`, { headers: { 'x-user': 'fay' } })
  t.teardown(() => ws.terminate())
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const refused = await fetch(`${httpUrl(url)}/reconnect-token`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-user': 'mallory' }, body: '{"clientId":"fay"}' })
  t.equal(refused.status, 403)
  t.match(await refused.json(), { message: /identify hook did not give this request the client id asked for/ })
})
