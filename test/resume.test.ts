import t from 'tap'
import Fastify from 'fastify'
import { once } from 'node:events'
import stabilizer, { type ResumeInfo, type StabilizedConnection, type StabilizerOptions } from '../lib/index.js'
import { buildApp, closeOf, httpUrl, listen, openClient, refusal, waitFor } from './fixtures/server.js'

const secrets = ['s'.repeat(32) + '-resume-tests']

async function resumableApp (options: StabilizerOptions = {}) {
  const resumes: Array<{ id: string, info: ResumeInfo }> = []
  const app = await buildApp({ secrets, ...options, onResume: (connection: StabilizedConnection, info: ResumeInfo) => { resumes.push({ id: connection.id, info }) } })
  const url = await listen(app)
  return { app, url, resumes }
}

void t.test('a client cut abruptly comes back with its token: same id, user data and groups restored, onResume told', async (t) => {
  const { app, url, resumes } = await resumableApp()
  t.teardown(() => app.close())
  const first = await openClient(`${url}/ws/dana`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const sessionId = app.stabilizer.getConnection('dana')!.sessionId
  app.stabilizer.setUserData('dana', 'cart', { items: [1, 2, 3] })
  app.stabilizer.join('dana', 'room-1')
  const token = app.stabilizer.generateReconnectToken('dana')
  first.terminate()
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  t.ok(app.stabilizer.getMemoryUsage().retainedSessionBytes > 0, 'the session is retained, counted in memory usage')
  t.equal(app.stabilizer.getMemoryUsage().userDataBytes, 0, 'and no longer as live user data')

  const second = await openClient(`${url}/ws/dana?token=${token}`)
  await waitFor(() => resumes.length === 1)
  t.same(resumes[0], { id: 'dana', info: { sessionId, stateRestored: true, replay: 'none', replayed: 0, missed: 0, historyLost: false } })
  t.same(app.stabilizer.getUserData('dana', 'cart'), { items: [1, 2, 3] })
  t.same(app.stabilizer.getGroups('dana'), ['room-1'])
  t.equal(app.stabilizer.getConnection('dana')!.sessionId, sessionId, 'the same session continues')
  t.same(app.stabilizer.getMemoryUsage().retainedSessions, 0)
  t.equal((await app.stabilizer.broadcast('hi room', { group: 'room-1' })).sent, 1)

  const replay = await refusal(`${url}/ws/dana?token=${token}`)
  t.equal(replay.statusCode, 401, 'a token is valid once')
  t.match(JSON.parse(replay.body), { code: 'FST_WS_STABILIZER_INVALID_TOKEN', message: /already used/ })
  second.terminate()
})

void t.test('invalid, expired, foreign and replayed tokens are refused with 401 before the upgrade — never a fresh session under the old id', async (t) => {
  const { app, url } = await resumableApp({ reconnectTokenTtl: 1000 })
  t.teardown(() => app.close())
  let upgrades = 0
  app.websocketServer.on('connection', () => { upgrades++ })
  const ws = await openClient(`${url}/ws/erik`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const token = app.stabilizer.generateReconnectToken('erik')
  const before = upgrades
  t.equal((await refusal(`${url}/ws/erik?token=garbage`)).statusCode, 401, 'malformed')
  t.equal((await refusal(`${url}/ws/other?token=${token}`)).statusCode, 401, 'issued for another client id')
  const expiring = app.stabilizer.generateReconnectToken('erik')
  await new Promise((resolve) => setTimeout(resolve, 1100))
  const expired = await refusal(`${url}/ws/erik?token=${expiring}`)
  t.equal(expired.statusCode, 401)
  t.match(JSON.parse(expired.body), { code: 'FST_WS_STABILIZER_TOKEN_EXPIRED' })
  t.equal(upgrades, before, 'none of them was upgraded')
  ws.terminate()
})

void t.test('a route without a clientId param takes the identity from the token', async (t) => {
  const app = Fastify()
  await app.register(stabilizer, { secrets })
  const ids: string[] = []
  app.get('/live', { websocket: true }, (_socket, request) => { ids.push(request.wsConnection!.id) })
  const url = await listen(app)
  t.teardown(() => app.close())
  const first = await openClient(`${url}/live`)
  await waitFor(() => ids.length === 1)
  const token = app.stabilizer.generateReconnectToken(ids[0])
  first.terminate()
  const second = await openClient(`${url}/live?token=${token}`)
  await waitFor(() => ids.length === 2)
  t.equal(ids[1], ids[0], 'the random id of the first connection is resumed')
  second.terminate()
})

void t.test('a resume while the old socket is still open replaces it and takes its state over', async (t) => {
  const { app, url, resumes } = await resumableApp()
  t.teardown(() => app.close())
  const old = await openClient(`${url}/ws/fay`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  app.stabilizer.setUserData('fay', 'k', 'v')
  app.stabilizer.join('fay', 'g')
  const token = app.stabilizer.generateReconnectToken('fay')
  const oldClosed = closeOf(old)
  const fresh = await openClient(`${url}/ws/fay?token=${token}`)
  t.equal((await oldClosed).code, 4500)
  await waitFor(() => resumes.length === 1)
  t.equal(resumes[0].info.stateRestored, true)
  t.equal(app.stabilizer.getUserData('fay', 'k'), 'v')
  t.same(app.stabilizer.getGroups('fay'), ['g'])
  await waitFor(() => app.stabilizer.getStats().totalDisconnections === 1)
  t.equal(app.stabilizer.getMemoryUsage().userDataBytes, 4, 'counted once')
  t.equal(app.stabilizer.getMemoryUsage().retainedSessions, 0, 'a replaced session is not retained as well')
  fresh.terminate()
})

void t.test('after the resume window the identity resumes but the state is gone, and nothing is left', async (t) => {
  const { app, url, resumes } = await resumableApp({ resumeWindow: 200 })
  t.teardown(() => app.close())
  const first = await openClient(`${url}/ws/gus`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  app.stabilizer.setUserData('gus', 'k', 'x'.repeat(100))
  const token = app.stabilizer.generateReconnectToken('gus')
  first.terminate()
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 0, 2000)
  t.equal(app.stabilizer.getMemoryUsage().retainedSessionBytes, 0, 'expiry freed everything')
  const second = await openClient(`${url}/ws/gus?token=${token}`)
  await waitFor(() => resumes.length === 1)
  t.equal(resumes[0].info.stateRestored, false)
  t.equal(app.stabilizer.getUserData('gus', 'k'), undefined)
  second.terminate()
})

void t.test('a session ended on purpose (close 1000) is not retained', async (t) => {
  const { app, url, resumes } = await resumableApp()
  t.teardown(() => app.close())
  const first = await openClient(`${url}/ws/hal`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  app.stabilizer.setUserData('hal', 'k', 1)
  const token = app.stabilizer.generateReconnectToken('hal')
  const closed = once(first, 'close')
  first.close(1000)
  await closed
  await waitFor(() => app.stabilizer.getStats().totalDisconnections === 1)
  t.equal(app.stabilizer.getMemoryUsage().retainedSessions, 0)
  const second = await openClient(`${url}/ws/hal?token=${token}`)
  await waitFor(() => resumes.length === 1)
  t.equal(resumes[0].info.stateRestored, false)
  second.terminate()
})

void t.test('after a graceful shutdown and a restart with the same secrets, identity resumes and state loss is reported', async (t) => {
  const first = await resumableApp()
  const ws = await openClient(`${first.url}/ws/ivy`)
  await waitFor(() => first.app.stabilizer.getConnectionCount() === 1)
  first.app.stabilizer.setUserData('ivy', 'k', 'v')
  const token = first.app.stabilizer.generateReconnectToken('ivy')
  const closed = closeOf(ws)
  await first.app.close()
  t.equal((await closed).code, 1012)
  t.equal(first.app.stabilizer.getMemoryUsage().retainedSessions, 0, 'the shutdown kept nothing')
  const second = await resumableApp()
  t.teardown(() => second.app.close())
  const again = await openClient(`${second.url}/ws/ivy?token=${token}`)
  await waitFor(() => second.resumes.length === 1)
  t.same(second.resumes[0], { id: 'ivy', info: { sessionId: second.app.stabilizer.getConnection('ivy')!.sessionId, stateRestored: false, replay: 'none', replayed: 0, missed: 0, historyLost: false } })
  again.terminate()
})

void t.test('POST /reconnect-token without identify: the connection secret proves the caller holds the client id', async (t) => {
  const { app, url } = await resumableApp({ tokenRequestsPerMinute: 3 })
  t.teardown(() => app.close())
  const ws = await openClient(`${url}/ws/jon`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const secret = app.stabilizer.getConnection('jon')!.connectionSecret
  const post = async (body: unknown) => await fetch(`${httpUrl(url)}/reconnect-token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const ok = await post({ clientId: 'jon', connectionSecret: secret })
  t.equal(ok.status, 200)
  const { token, expiresAt } = await ok.json() as { token: string, expiresAt: number }
  t.ok(expiresAt > Date.now())
  t.equal(await app.stabilizer.validateReconnectToken(token), 'jon')
  t.equal((await post({ clientId: 'jon' })).status, 403, 'a bare client id gets nothing')
  t.equal((await post({ clientId: 'jon', connectionSecret: 'guess' })).status, 403, 'nor a wrong secret')
  const limited = await post({ clientId: 'jon', connectionSecret: secret })
  t.equal(limited.status, 429, 'rate limited per client id')
  t.ok(Number(limited.headers.get('retry-after')) >= 1)
  t.equal((await post({ client: 'jon' })).status, 400, 'schema-checked body')
  t.equal((await post({ clientId: 'ghost', connectionSecret: secret })).status, 403, 'a secret proves only its own client')
  ws.terminate()
})

void t.test('POST /reconnect-token with identify: the caller identity must be that client id; route can be moved or disabled', async (t) => {
  const app = Fastify()
  await app.register(stabilizer, { secrets, reconnectTokenRoute: '/auth/ws-token', identify: (request) => String(request.headers['x-user']) })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  t.teardown(() => app.close())
  const ws = await openClient(`${url}/ws`, { headers: { 'x-user': 'kim' } })
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const post = async (user: string, clientId: string) => await fetch(`${httpUrl(url)}/auth/ws-token`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-user': user }, body: JSON.stringify({ clientId }) })
  t.equal((await post('kim', 'kim')).status, 200)
  t.equal((await post('mallory', 'kim')).status, 403, 'nobody obtains a token for a client id they do not hold')
  t.equal((await post('lee', 'lee')).status, 404, 'not connected')
  t.equal((await fetch(`${httpUrl(url)}/reconnect-token`, { method: 'POST' })).status, 404, 'moved')
  ws.terminate()
  const off = await buildApp({ reconnectTokenRoute: false })
  const offUrl = await listen(off)
  t.equal((await fetch(`${httpUrl(offUrl)}/reconnect-token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"clientId":"a"}' })).status, 404, 'disabled')
  await off.close()
})
