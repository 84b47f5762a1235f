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

void t.test('a stabilizer.v1 client is welcomed, gets messages numbered per stream and sends enveloped ones; a plain client is untouched', async (t) => {
  const { app, url } = await protocolApp(t, { heartbeatInterval: 20_000, heartbeatTimeout: 5_000 })
  const peer = await ProtocolPeer.open(`${url}/ws/ana`)
  t.equal(peer.socket.protocol, 'stabilizer.v1', 'the server selected the subprotocol')
  const connection = app.stabilizer.getConnection('ana')!
  t.match(peer.welcome, { t: 'welcome', v: 1, clientId: 'ana', sessionId: connection.sessionId, secret: connection.connectionSecret, token: String, tokenExpiresAt: Number, heartbeat: { interval: 20_000, timeout: 5_000 }, positions: { '*': [String, Number], 'c:ana': [String, Number] }, resume: null })
  t.same(Object.keys(peer.welcome!.positions).sort(), ['*', 'c:ana'], 'a new session follows `*` and its own stream')
  const [allEpoch, allSeq] = peer.welcome!.positions['*']
  const [ownEpoch, ownSeq] = peer.welcome!.positions['c:ana']
  t.equal(connection.protocol, true)
  t.equal(await app.stabilizer.validateReconnectToken(peer.welcome!.token!), 'ana', 'the welcome token is a real reconnect token')

  const plain = await openClient(`${url}/ws/bob`)
  const plainGot: Array<{ data: string, binary: boolean }> = []
  plain.on('message', (data: Buffer, binary) => plainGot.push({ data: data.toString(), binary }))
  t.equal(await app.stabilizer.sendToClient('ana', 'hello "you"'), true)
  await app.stabilizer.sendToClient('ana', { n: 1 })
  await app.stabilizer.sendToClient('ana', Buffer.from([1, 2, 3]))
  t.match(await app.stabilizer.broadcast('to all'), { total: 2, sent: 2 })
  await peer.until(() => peer.messages.length === 4)
  await waitFor(() => plainGot.length === 1)
  t.same(peer.messages.map((m) => [m.stream, m.epoch, m.seq]), [['c:ana', ownEpoch, ownSeq + 1], ['c:ana', ownEpoch, ownSeq + 2], ['c:ana', ownEpoch, ownSeq + 3], ['*', allEpoch, allSeq + 1]], 'numbered per stream, on from the welcome\'s positions')
  t.same(peer.malformed, [])
  t.same(peer.messages[0].data, 'hello "you"', 'text arrives as it was sent')
  t.same(peer.messages[1].data, '{"n":1}', 'a value arrives as its JSON text, as for plain clients')
  t.same(peer.messages[2], { stream: 'c:ana', epoch: ownEpoch, seq: ownSeq + 3, data: Buffer.from([1, 2, 3]), binary: true, duplicate: false }, 'binary: the stream, epoch and seq header, then the bytes')
  t.same(peer.messages[3].data, 'to all')
  t.same(plainGot, [{ data: 'to all', binary: false }], 'the plain client gets the raw message')

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
  const had = first.positionsNow()
  const received = first.messages.length
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  await waitFor(() => next >= 400 + received, 5000, 1)
  const second = await ProtocolPeer.open(`${url}/ws/cy`, { token, positions: had })
  await new Promise((resolve) => setTimeout(resolve, 50))
  run.sending = false
  await sender
  await second.until(() => received + second.messages.length === next)
  t.match(second.welcome!.resume, { outcome: 'full', stateRestored: true, missed: 0, historyLost: false })
  t.ok(second.welcome!.resume!.replayed >= 400, `${second.welcome!.resume!.replayed} replayed`)
  t.same(second.welcome!.positions, had, 'the replay continues from what the client had')
  const all = [...first.texts.slice(0, received), ...second.texts]
  t.equal(all.length, next, 'every message arrived once')
  t.ok(all.every((text, i) => text === `m${i}`), 'in order, without duplicates or gaps')
  const [epoch, seq] = had['c:cy']
  t.ok(second.messages.every((m, i) => m.stream === 'c:cy' && m.epoch === epoch && m.seq === seq + 1 + i), 'sequence numbers continue in the stream')
  t.match(resumes, [{ id: 'cy', info: { replay: 'full', stateRestored: true, missed: 0 } }])
  second.socket.terminate()
})

void t.test('messages and broadcasts sent while the client is away are queued in its retained session', async (t) => {
  const { app, url } = await protocolApp(t)
  const first = await ProtocolPeer.open(`${url}/ws/dee`)
  app.stabilizer.join('dee', 'room')
  await app.stabilizer.sendToClient('dee', 'before')
  await first.until(() => first.messages.length === 1)
  first.socket.close(4000, 'bye') // a close that allows resuming
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  t.equal(await app.stabilizer.sendToClient('dee', 'direct'), true, 'kept for its retained session')
  await app.stabilizer.broadcast('to room', { group: 'room' })
  await app.stabilizer.broadcast('to others', { group: 'other' })
  await app.stabilizer.broadcast('excluded', { exclude: 'dee' })
  const had = first.positionsNow()
  t.ok(had['g:room'] !== undefined, 'the peer followed the group\'s stream')
  const second = await ProtocolPeer.open(`${url}/ws/dee`, { token: first.welcome!.token!, positions: had })
  await second.until(() => second.messages.length === 2)
  t.same(second.texts, ['direct', 'to room'], 'not the other group\'s, nor the broadcast that excluded it')
  t.same(second.messages.map((m) => [m.stream, m.seq]), [['c:dee', had['c:dee'][1] + 1], ['g:room', had['g:room'][1] + 1]])
  t.same(app.stabilizer.getGroups('dee'), ['room'])
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
  await app.stabilizer.sendToClient('eve', 'while closing')
  // The close frame is stuck behind megabytes the client does not read: closeTimeout ends it.
  const closed = closeOf(first.socket)
  first.socket.resume()
  await closed
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  const had = first.positionsNow()
  const second = await ProtocolPeer.open(`${url}/ws/eve`, { token: first.welcome!.token!, positions: had })
  await second.until(() => second.texts.includes('while closing'))
  t.equal(second.texts.at(-1), 'while closing', 'replayed last, from the stream of the connection that was closing')
  t.same(second.messages.map((m) => m.seq), Array.from({ length: second.messages.length }, (_, i) => had['c:eve'][1] + 1 + i), 'numbered on from what the client had, no gap')
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
  const had = first.positionsNow()
  const [epoch, seen] = had['c:eve']
  const second = await ProtocolPeer.open(`${url}/ws/eve`, { token: first.welcome!.token!, positions: had })
  await second.until(() => second.messages.length === 10)
  t.same(second.welcome!.resume, { outcome: 'partial', stateRestored: true, replayed: 10, missed: 40, historyLost: false })
  t.same(second.welcome!.positions['c:eve'], [epoch, seen + 40], 'the client skips the gap')
  t.same(second.messages.map((m) => m.seq), Array.from({ length: 10 }, (_, i) => seen + 41 + i))
  t.equal(second.texts[0], 'away 40')
  t.match(resumes[0].info, { replay: 'partial', replayed: 10, missed: 40 })
  second.socket.terminate()
})

void t.test('a resume without positions replays nothing; the welcome gives where the streams stand', async (t) => {
  const { app, url, resumes } = await protocolApp(t)
  const first = await ProtocolPeer.open(`${url}/ws/fin`)
  for (let i = 0; i < 20; i++) await app.stabilizer.sendToClient('fin', 'x'.repeat(1000))
  await first.until(() => first.messages.length === 20)
  // The previous protocol's acknowledgement is an unknown frame now: ignored, not a protocol error.
  first.socket.send(JSON.stringify({ t: 'ack', s: 20 }))
  const had = first.positionsNow()
  first.socket.terminate()
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  const second = await ProtocolPeer.open(`${url}/ws/fin`, { token: first.welcome!.token! })
  t.same(second.welcome!.resume, { outcome: 'none', stateRestored: true, replayed: 0, missed: 0, historyLost: false })
  t.same(second.welcome!.positions['c:fin'], had['c:fin'], 'numbering continues')
  t.match(resumes[0].info, { replay: 'none', stateRestored: true })
  second.socket.terminate()
})

void t.test('after the resume window the session and its history are gone, and the welcome says so', async (t) => {
  const { app, url } = await protocolApp(t, { resumeWindow: 200 })
  const first = await ProtocolPeer.open(`${url}/ws/gil`)
  for (let i = 0; i < 5; i++) await app.stabilizer.sendToClient('gil', `m${i}`)
  await first.until(() => first.messages.length === 5)
  first.socket.terminate()
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  await app.stabilizer.sendToClient('gil', 'lost')
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 0, 3000)
  t.equal(app.stabilizer.getMemoryUsage().retainedSessionBytes, 0, 'expiry freed the log')
  const second = await ProtocolPeer.open(`${url}/ws/gil`, { token: first.welcome!.token!, positions: first.positionsNow() })
  t.match(second.welcome!.resume, { outcome: 'partial', stateRestored: false, replayed: 0, historyLost: true })
  await app.stabilizer.sendToClient('gil', 'new')
  await second.until(() => second.messages.length === 1)
  const [epoch, seq] = second.welcome!.positions['c:gil']
  t.match(second.messages[0], { stream: 'c:gil', epoch, seq: seq + 1, data: 'new' }, 'numbered on from the welcome\'s position')
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
  t.equal(app.stabilizer.getStats().rejectedUpgrades.identity, 3)
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

void t.test('join and leave send follow and unfollow; positions offered in the query string resume too', async (t) => {
  const { app, url } = await protocolApp(t)
  const first = await ProtocolPeer.open(`${url}/ws/kai`)
  app.stabilizer.join('kai', 'room')
  await first.until(() => first.control.some((f) => f.t === 'follow'))
  const follow = first.control.find((f) => f.t === 'follow')!
  t.match(follow, { t: 'follow', c: 'g:room', e: String, s: Number })
  await app.stabilizer.broadcast('r1', { group: 'room' })
  await first.until(() => first.messages.length === 1)
  t.match(first.messages[0], { stream: 'g:room', epoch: follow.e, seq: (follow.s as number) + 1, data: 'r1' }, 'the group\'s messages follow the follow position')
  app.stabilizer.join('kai', 'hall')
  app.stabilizer.leave('kai', 'room')
  await first.until(() => first.control.some((f) => f.t === 'unfollow'))
  t.match(first.control.find((f) => f.t === 'unfollow'), { t: 'unfollow', c: 'g:room' })
  t.same(Object.keys(first.positions).sort(), ['*', 'c:kai', 'g:hall'])

  first.socket.terminate()
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  await app.stabilizer.broadcast('h1', { group: 'hall' })
  const second = await ProtocolPeer.open(`${url}/ws/kai`, { token: first.welcome!.token!, positions: first.positionsNow(), inQuery: true })
  await second.until(() => second.messages.length === 1)
  t.same(second.texts, ['h1'])
  t.same(Object.keys(second.welcome!.positions).sort(), ['*', 'c:kai', 'g:hall'], 'the session\'s streams came back with its groups')
  t.match(second.welcome!.resume, { outcome: 'full', stateRestored: true, replayed: 1, missed: 0, historyLost: false })
  second.socket.terminate()
})
