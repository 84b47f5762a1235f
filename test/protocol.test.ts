import t from 'tap'
import { once } from 'node:events'
import Fastify from 'fastify'
import { WebSocket } from 'ws'
import stabilizer, { type ResumeInfo, type StabilizedConnection, type StabilizerOptions } from '../lib/index.js'
import { buildApp, closeOf, listen, openClient, waitFor } from './fixtures/server.js'
import { ProtocolPeer } from './fixtures/protocol-peer.js'

const secrets = ['p'.repeat(32) + '-protocol-tests']

async function protocolApp (t: { teardown: (fn: () => unknown) => void }, options: StabilizerOptions = {}) {
  const resumes: Array<{ id: string, info: ResumeInfo }> = []
  const app = await buildApp({ secrets, ...options, onResume: (connection: StabilizedConnection, info: ResumeInfo) => { resumes.push({ id: connection.id, info }) } })
  t.teardown(async () => await app.close())
  const url = await listen(app)
  return { app, url, resumes }
}

void t.test('a stabilizer.v1 client is welcomed with positions, gets positioned messages and sends enveloped ones; a plain client is untouched', async (t) => {
  const { app, url } = await protocolApp(t, { heartbeatInterval: 20_000, heartbeatTimeout: 5_000 })
  const peer = await ProtocolPeer.open(`${url}/ws/ana`)
  t.equal(peer.socket.protocol, 'stabilizer.v1', 'the server selected the subprotocol')
  const connection = app.stabilizer.getConnection('ana')!
  t.match(peer.welcome, { t: 'welcome', v: 1, clientId: 'ana', sessionId: connection.sessionId, secret: connection.connectionSecret, token: String, tokenExpiresAt: Number, heartbeat: { interval: 20_000, timeout: 5_000 }, resume: null })
  t.same(Object.keys(peer.welcome!.positions).sort(), ['*', 'c:ana'], 'it follows everyone and its own stream')
  t.ok(Object.values(peer.welcome!.positions).every(([epoch, seq]) => typeof epoch === 'string' && epoch.length > 0 && seq === 0), 'from the start of each')
  t.equal(connection.protocol, true)
  t.equal(await app.stabilizer.validateReconnectToken(peer.welcome!.token!), 'ana', 'the welcome token is a real reconnect token')

  const plain = await openClient(`${url}/ws/bob`)
  const plainGot: Array<{ data: string, binary: boolean }> = []
  plain.on('message', (data: Buffer, binary) => plainGot.push({ data: data.toString(), binary }))
  t.equal(await app.stabilizer.sendToClient('ana', 'hello "you"'), true)
  await app.stabilizer.sendToClient('ana', { n: 1 })
  await app.stabilizer.sendToClient('ana', Buffer.from([1, 2, 3]))
  t.match(await app.stabilizer.broadcast('to all'), { total: 2, sent: 2, published: true })
  await peer.until(() => peer.messages.length === 4)
  await waitFor(() => plainGot.length === 1)
  t.same(peer.messagesOf('c:ana').map((m) => m.seq), [1, 2, 3], 'direct messages numbered in the client\'s stream from 1')
  t.same(peer.messagesOf('*').map((m) => m.seq), [1], 'the broadcast in the stream of everyone')
  t.equal(peer.messagesOf('c:ana')[0].epoch, peer.welcome!.positions['c:ana'][0], 'in the epoch the welcome gave')
  t.same(peer.messages[0].data, 'hello "you"', 'text arrives as it was sent')
  t.same(peer.messages[1].data, '{"n":1}', 'a value arrives as its JSON text, as for plain clients')
  t.same(peer.messages[2].data, Buffer.from([1, 2, 3]), 'binary: a position header, then the bytes')
  t.same(peer.messages[3].data, 'to all')
  t.same(plainGot, [{ data: 'to all', binary: false }], 'the plain client gets the raw message')
  t.same(peer.malformed, [], 'every frame followed the protocol')

  peer.send('from ana')
  peer.socket.send(Buffer.from('raw bytes'))
  await waitFor(() => (app.received.get('ana') ?? []).length === 2)
  t.same(app.received.get('ana'), ['from ana', 'raw bytes'], 'the handler sees the payload without the envelope')

  peer.socket.send(JSON.stringify({ t: 'token' }))
  await peer.until(() => peer.control.some((f) => f.t === 'token'))
  const issued = peer.control.find((f) => f.t === 'token')!
  t.equal(await app.stabilizer.validateReconnectToken(issued.token as string), 'ana', 'a token requested in-band')

  peer.socket.send(JSON.stringify({ t: 'some-future-frame' }))
  peer.socket.send('not json')
  t.same(await closeOf(peer.socket), { code: 1002, reason: 'malformed stabilizer.v1 frame' }, 'unknown frames are ignored, malformed ones close with 1002')
  plain.terminate()
})

void t.test('a group joined after the welcome is followed from an exact position; leaving it unfollows', async (t) => {
  const { app, url } = await protocolApp(t)
  const peer = await ProtocolPeer.open(`${url}/ws/kim`)
  await app.stabilizer.broadcast('before kim', { group: 'room' })
  t.equal(app.stabilizer.join('kim', 'room'), true)
  await peer.until(() => peer.control.some((f) => f.t === 'follow'))
  t.match(peer.control.find((f) => f.t === 'follow'), { t: 'follow', c: 'g:room', e: String, s: 1 }, 'after the one message published before the join')
  await app.stabilizer.broadcast('to room', { group: 'room' })
  await peer.until(() => peer.messages.length === 1)
  t.same(peer.messagesOf('g:room').map((m) => [m.seq, m.data]), [[2, 'to room']])
  t.equal(app.stabilizer.leave('kim', 'room'), true)
  await peer.until(() => peer.control.some((f) => f.t === 'unfollow'))
  t.equal(peer.positions['g:room'], undefined, 'the client forgot the stream')
  peer.socket.terminate()
})

void t.test('a client cut abruptly while the server keeps sending gets exactly what it missed, in order, once', async (t) => {
  const { app, url, resumes } = await protocolApp(t)
  const first = await ProtocolPeer.open(`${url}/ws/cy`)
  const token = first.welcome!.token!
  let next = 0
  const run = { sending: true }
  const sender = (async () => {
    while (run.sending) {
      await app.stabilizer.sendToClient('cy', `m${next++}`)
      if (next % 20 === 0) await new Promise((resolve) => setTimeout(resolve, 1))
    }
  })()
  await first.until(() => first.messages.length >= 200)
  first.socket.terminate() // the socket is destroyed: whatever was in flight is lost
  const positions = first.positionsNow()
  const had = positions['c:cy'][1]
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  await waitFor(() => next >= 400 + had, 5000, 1)
  const second = await ProtocolPeer.open(`${url}/ws/cy`, { token, positions })
  await new Promise((resolve) => setTimeout(resolve, 50))
  run.sending = false
  await sender
  await second.until(() => second.positions['c:cy'][1] === next)
  t.match(second.welcome!.resume, { outcome: 'full', stateRestored: true, missed: 0, historyLost: false })
  t.ok(second.welcome!.resume!.replayed >= 400, `${second.welcome!.resume!.replayed} replayed`)
  t.same(second.welcome!.positions['c:cy'], positions['c:cy'], 'the replay continues from what the client had')
  const all = [...first.texts.slice(0, had), ...second.texts]
  t.equal(all.length, next, 'every message arrived once')
  t.ok(all.every((text, i) => text === `m${i}`), 'in order, without duplicates or gaps')
  t.ok(second.messages.every((m, i) => m.seq === had + 1 + i && !m.duplicate), 'positions continue')
  t.match(resumes, [{ id: 'cy', info: { replay: 'full', stateRestored: true, missed: 0, historyLost: false } }])
  second.socket.terminate()
})

void t.test('messages and broadcasts sent while the client is away are replayed from its streams', async (t) => {
  const { app, url } = await protocolApp(t)
  const first = await ProtocolPeer.open(`${url}/ws/dee`)
  app.stabilizer.join('dee', 'room')
  await app.stabilizer.sendToClient('dee', 'before')
  await first.until(() => first.messages.length === 1 && first.positions['g:room'] !== undefined)
  first.socket.close(4000, 'bye') // a close that allows resuming
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  t.equal(await app.stabilizer.sendToClient('dee', 'direct'), true, 'kept for its retained session')
  t.equal(await app.stabilizer.sendToClient('nobody', 'x'), false, 'connected and retained nowhere')
  t.match(await app.stabilizer.broadcast('to room', { group: 'room' }), { total: 0, sent: 0, published: true })
  await app.stabilizer.broadcast('to others', { group: 'other' })
  await app.stabilizer.broadcast('excluded', { exclude: 'dee' })
  const second = await ProtocolPeer.open(`${url}/ws/dee`, { token: first.welcome!.token!, positions: first.positionsNow() })
  await second.until(() => second.messages.length === 2)
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(second.texts, ['direct', 'to room'], 'in the order they were published; not the other group, not what excluded it')
  t.same(second.messagesOf('c:dee').map((m) => m.seq), [2])
  t.match(second.welcome!.resume, { outcome: 'full', stateRestored: true, replayed: 2, missed: 0, historyLost: false })
  t.same(app.stabilizer.getGroups('dee'), ['room'])
  t.ok(second.welcome!.positions['g:room'] !== undefined, 'its group is followed again')
  second.socket.terminate()
})

void t.test('a message sent while the server is closing the connection (slow consumer) is replayed on resume', async (t) => {
  const { app, url } = await protocolApp(t, { closeTimeout: 500 })
  const first = await ProtocolPeer.open(`${url}/ws/eve`)
  await app.stabilizer.sendToClient('eve', 'before')
  await first.until(() => first.messages.length === 1)
  // The client stops reading: the server's writes fill the socket buffers, then its own.
  first.socket.pause()
  const chunk = 'x'.repeat(200_000)
  let sent = 0
  while (app.stabilizer.getConnection('eve') !== undefined && sent < 500) {
    void app.stabilizer.sendToClient('eve', chunk) // not awaited: a write completes only when the client reads
    sent++
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.equal(app.stabilizer.getStats().protection.slowConsumerDisconnects, 1, `closed as a slow consumer after ${sent} large messages`)
  t.equal(await app.stabilizer.sendToClient('eve', 'while closing'), true, 'not written, but kept in its stream for the session')
  // The close frame is stuck behind megabytes the client does not read: closeTimeout ends it.
  const closed = closeOf(first.socket)
  first.socket.resume()
  await closed
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  const second = await ProtocolPeer.open(`${url}/ws/eve`, { token: first.welcome!.token!, positions: first.positionsNow() })
  await second.until(() => second.texts.includes('while closing'))
  t.equal(second.texts.at(-1), 'while closing', 'replayed last')
  const had = first.positionsNow()['c:eve'][1]
  t.same(second.messages.map((m) => m.seq), Array.from({ length: second.messages.length }, (_, i) => had + 1 + i), 'on from what the client had, no gap')
  second.socket.terminate()
})

void t.test('a log that overflowed while away gives a partial replay, and says how much is lost', async (t) => {
  const { app, url, resumes } = await protocolApp(t, { replayBufferSize: 10 })
  const first = await ProtocolPeer.open(`${url}/ws/eve`)
  await app.stabilizer.sendToClient('eve', 'seen')
  await first.until(() => first.messages.length === 1)
  first.socket.terminate()
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  for (let i = 0; i < 50; i++) await app.stabilizer.sendToClient('eve', `away ${i}`)
  const second = await ProtocolPeer.open(`${url}/ws/eve`, { token: first.welcome!.token!, positions: first.positionsNow() })
  await second.until(() => second.messages.length === 10)
  t.same(second.welcome!.resume, { outcome: 'partial', stateRestored: true, replayed: 10, missed: 40, historyLost: false })
  t.equal(second.welcome!.positions['c:eve'][1], 41, 'the client skips the gap')
  t.same(second.messages.map((m) => m.seq), Array.from({ length: 10 }, (_, i) => 42 + i))
  t.equal(second.texts[0], 'away 40')
  t.match(resumes[0].info, { replay: 'partial', replayed: 10, missed: 40 })
  second.socket.terminate()
})

void t.test('a resume without positions replays nothing and continues from the streams\' tops', async (t) => {
  const { app, url, resumes } = await protocolApp(t)
  const first = await ProtocolPeer.open(`${url}/ws/fin`)
  for (let i = 0; i < 20; i++) await app.stabilizer.sendToClient('fin', 'x'.repeat(1000))
  await first.until(() => first.messages.length === 20)
  first.socket.terminate()
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  const second = await ProtocolPeer.open(`${url}/ws/fin`, { token: first.welcome!.token! })
  t.same(second.welcome!.resume, { outcome: 'none', stateRestored: true, replayed: 0, missed: 0, historyLost: false })
  t.equal(second.welcome!.positions['c:fin'][1], 20, 'numbering continues')
  t.match(resumes[0].info, { replay: 'none', stateRestored: true })
  second.socket.terminate()
})

void t.test('after the resume window the state is gone, and what expired from the log is counted as missed', async (t) => {
  const { app, url } = await protocolApp(t, { resumeWindow: 200 })
  const first = await ProtocolPeer.open(`${url}/ws/gil`)
  for (let i = 0; i < 5; i++) await app.stabilizer.sendToClient('gil', `m${i}`)
  await first.until(() => first.messages.length === 5)
  first.socket.terminate()
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  t.equal(await app.stabilizer.sendToClient('gil', 'lost'), true, 'kept for the retained session')
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 0, 3000)
  t.equal(app.stabilizer.getMemoryUsage().retainedSessionBytes, 0, 'expiry freed the session')
  await new Promise((resolve) => setTimeout(resolve, 250))
  const second = await ProtocolPeer.open(`${url}/ws/gil`, { token: first.welcome!.token!, positions: first.positionsNow() })
  t.same(second.welcome!.resume, { outcome: 'partial', stateRestored: false, replayed: 0, missed: 1, historyLost: false })
  t.equal(second.welcome!.positions['c:gil'][1], 6, 'past what expired')
  await app.stabilizer.sendToClient('gil', 'new')
  await second.until(() => second.messages.length === 1)
  t.equal(second.messages[0].seq, 7)
  second.socket.terminate()
})

void t.test('after a restart of a single instance the client is told that its history was lost', async (t) => {
  const before = await protocolApp(t)
  const first = await ProtocolPeer.open(`${before.url}/ws/hugo`)
  await before.app.stabilizer.sendToClient('hugo', 'seen')
  await first.until(() => first.messages.length === 1)
  const token = first.welcome!.token!
  const positions = first.positionsNow()
  await before.app.close()
  const after = await protocolApp(t)
  const second = await ProtocolPeer.open(`${after.url}/ws/hugo`, { token, positions })
  t.same(second.welcome!.resume, { outcome: 'partial', stateRestored: false, replayed: 0, missed: 0, historyLost: true })
  t.not(second.welcome!.positions['c:hugo'][0], positions['c:hugo'][0], 'a new epoch')
  t.match(after.resumes, [{ id: 'hugo', info: { replay: 'partial', historyLost: true } }])
  second.socket.terminate()
})

void t.test('a token offered in the subprotocol that fails closes with 4003 and a reason; the handler never runs', async (t) => {
  const app = Fastify()
  await app.register(stabilizer, { secrets })
  const handled: string[] = []
  app.get<{ Params: { clientId: string } }>('/ws/:clientId', { websocket: true }, (_socket, request) => { handled.push(request.params.clientId) })
  const url = await listen(app)
  t.teardown(() => app.close())
  const first = await ProtocolPeer.open(`${url}/ws/hal`)
  const token = first.welcome!.token!
  const refusedWith = async (path: string, protocols: string[]) => {
    const ws = new WebSocket(`${url}${path}`, protocols)
    const [code, reason] = await once(ws, 'close') as [number, Buffer]
    return { code, reason: reason.toString() }
  }
  t.same(await refusedWith('/ws/hal', ['stabilizer.v1', 'stabilizer.token.garbage']), { code: 4003, reason: 'Invalid reconnect token: malformed' })
  t.same(await refusedWith('/ws/other', ['stabilizer.v1', `stabilizer.token.${token}`]), { code: 4003, reason: 'Invalid reconnect token: it was issued for another client' })
  const second = await ProtocolPeer.open(`${url}/ws/hal`, { token })
  t.same(await refusedWith('/ws/hal', ['stabilizer.v1', `stabilizer.token.${token}`]), { code: 4003, reason: 'Invalid reconnect token: already used' })
  t.equal(app.stabilizer.getConnectionCount(), 1, 'refused sockets were never registered')
  t.equal(app.stabilizer.getStats().rejectedUpgrades.token, 3, 'counted as token refusals')
  t.same(handled, ['hal', 'hal'], 'the handler ran only for the admitted connections')
  second.socket.terminate()
})

void t.test('heartbeats travel as protocol messages: answered ones measure RTT, unanswered ones terminate', async (t) => {
  const { app, url } = await protocolApp(t, { heartbeatInterval: 200, heartbeatTimeout: 100 })
  const live = await ProtocolPeer.open(`${url}/ws/ivy`)
  const silent = await ProtocolPeer.open(`${url}/ws/jon`)
  silent.answerPings = false
  const silentClosed = once(silent.socket, 'close')
  await live.until(() => live.control.filter((f) => f.t === 'ping').length >= 3, 3000)
  t.match(live.control[0], { t: 'ping', ts: Number })
  t.ok(app.stabilizer.getConnection('ivy')!.lastRtt !== undefined, 'RTT measured from the protocol pong')
  await silentClosed
  t.equal(app.stabilizer.getConnection('jon'), undefined, 'the silent peer was terminated')
  t.equal(app.stabilizer.getStats().closedByCause.heartbeat_timeout, 1)
  live.socket.terminate()
})
