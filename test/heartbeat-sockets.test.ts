import t from 'tap'
import Fastify from 'fastify'
import { once } from 'node:events'
import { WebSocket } from 'ws'
import stabilizer, { CloseCode, type StabilizedConnection, type StabilizerOptions } from '../lib/index.js'
import { listen, openClient, waitFor } from './fixtures/server.js'
import { clientFrame, closeCodeIn, openRawPeer, pingsIn, framesIn } from './fixtures/raw-peer.js'

interface Disconnect { id: string, code: number, reason: string, lastRtt: number | undefined, at: number }

async function heartbeatApp (options: StabilizerOptions) {
  const disconnects: Disconnect[] = []
  const seenByHandler: string[] = []
  const app = Fastify()
  await app.register(stabilizer, {
    ...options,
    onDisconnect: (connection: StabilizedConnection, code: number, reason: string) => {
      disconnects.push({ id: connection.id, code, reason, lastRtt: connection.lastRtt, at: performance.now() })
    }
  })
  app.get<{ Params: { clientId: string } }>('/ws/:clientId', { websocket: true }, (socket) => {
    socket.on('message', (data) => seenByHandler.push(String(data)))
  })
  const url = await listen(app)
  return { app, url, disconnects, seenByHandler }
}

void t.test('ping frames: a conforming client answers by itself; RTT is measured and reported', async (t) => {
  const { app, url, disconnects } = await heartbeatApp({ heartbeatInterval: 200, heartbeatTimeout: 100 })
  t.teardown(() => app.close())
  const clients = await Promise.all(['a', 'b', 'c'].map((id) => openClient(`${url}/ws/${id}`)))
  await waitFor(() => app.stabilizer.getStats().heartbeat.pongsReceived >= 6, 3000)
  await new Promise((resolve) => setTimeout(resolve, 300))
  const connection = app.stabilizer.getConnection('a')!
  t.type(connection.lastRtt, 'number')
  t.type(connection.smoothedRtt, 'number')
  const { heartbeat } = app.stabilizer.getStats()
  t.match(heartbeat, { type: 'ping', intervalMs: 200, timeoutMs: 100, timeouts: 0, rttMs: { samples: 3 } })
  t.ok(heartbeat.rttMs.p50! <= heartbeat.rttMs.p90! && heartbeat.rttMs.p90! <= heartbeat.rttMs.p99!)
  t.same(disconnects, [])
  for (const ws of clients) ws.terminate()
})

/**
 * A raw peer's connection and two counts: pongs the heartbeat took (`counted`) and pongs ws's
 * own parser emitted (`parsedByWs`). `nextPing` waits for a ping not answered yet; `answer`
 * writes `bytes` in one write to it and waits until `processed` holds.
 */
async function pongCounting (app: Awaited<ReturnType<typeof heartbeatApp>>['app'], url: string, id: string) {
  const peer = await openRawPeer(url, `/ws/${id}`)
  await waitFor(() => app.stabilizer.getConnection(id) !== undefined)
  const socket = app.stabilizer.getConnection(id)!.socket
  const receiver = (socket as unknown as { _receiver: WebSocket & { _bufferedBytes: number } })._receiver
  let parsedByWs = 0
  receiver.on('pong', () => { parsedByWs++ })
  const counted = (): number => app.stabilizer.getStats().heartbeat.pongsReceived
  // Pings answered so far: the next ping may come while the last answer is still being read
  // (a batch sends it up to one interval early), so it is counted from the peer's side.
  let answered = 0
  const nextPing = async (): Promise<void> => {
    await waitFor(() => pingsIn(peer.received()) > answered, 3000)
    answered = pingsIn(peer.received())
  }
  const answer = async (bytes: Buffer, processed: () => boolean): Promise<void> => {
    await nextPing()
    peer.sendBytes(bytes)
    await waitFor(processed, 3000)
  }
  return { peer, socket, receiver, counted, parsedByWs: () => parsedByWs, nextPing, answer }
}

void t.test('a pong that arrives alone is read off the transport; any other pong goes through ws, as before', async (t) => {
  const { app, url, seenByHandler } = await heartbeatApp({ heartbeatInterval: 100, heartbeatTimeout: 5000 })
  t.teardown(() => app.close())
  const { peer, socket, receiver, counted, parsedByWs, nextPing, answer } = await pongCounting(app, url, 'p')
  t.teardown(() => peer.destroy())

  await answer(clientFrame(0xa, Buffer.alloc(0)), () => counted() === 1)
  t.equal(parsedByWs(), 0, 'an empty pong is counted without ws parsing it (if this fails, ws changed the internals lib/wire.ts relies on)')
  t.type(app.stabilizer.getConnection('p')!.lastRtt, 'number', 'and its RTT is measured')

  await answer(clientFrame(0xa, Buffer.alloc(125, 7)), () => counted() === 2)
  t.equal(parsedByWs(), 0, 'a pong with the longest payload a control frame may carry, the same')

  await answer(Buffer.concat([clientFrame(0xa, Buffer.alloc(0)), clientFrame(0x1, Buffer.from('after the pong'))]), () => counted() === 3 && seenByHandler.length === 1)
  t.equal(parsedByWs(), 1, 'a pong and a message in one chunk: ws parses both')
  t.same(seenByHandler, ['after the pong'], 'and the message reaches the handler')

  const split = clientFrame(0xa, Buffer.from('split'))
  await nextPing()
  peer.sendBytes(split.subarray(0, 3))
  await waitFor(() => receiver._bufferedBytes > 0)
  peer.sendBytes(split.subarray(3))
  await waitFor(() => counted() === 4)
  t.equal(parsedByWs(), 2, 'a pong in two chunks: ws joins and parses it')

  const appSaw: string[] = []
  socket.on('pong', (data) => appSaw.push(String(data)))
  await answer(clientFrame(0xa, Buffer.from('for the app')), () => appSaw.length === 1)
  t.same([counted(), parsedByWs()], [5, 3], 'with a \'pong\' listener of the app\'s, ws parses it and the heartbeat counts it')
  t.same(appSaw, ['for the app'], 'and the app\'s listener gets its payload')

  socket.removeAllListeners('pong')
  const appOnly: string[] = []
  socket.on('pong', (data) => appOnly.push(String(data)))
  await answer(clientFrame(0xa, Buffer.from('only the app listens')), () => appOnly.length === 1)
  t.same(appOnly, ['only the app listens'], 'the app\'s listener in place of the stabilizer\'s: it gets the pong')
  t.same([counted(), parsedByWs()], [5, 4], 'through ws, and the heartbeat does not count it')
  t.equal(app.stabilizer.getConnectionCount(), 1, 'the peer stayed connected throughout')
})

void t.test('pongs that ws rejects are rejected as before', async (t) => {
  const { app, url } = await heartbeatApp({ heartbeatInterval: 100, heartbeatTimeout: 5000 })
  t.teardown(() => app.close())
  const rejected = [
    ['unmasked', clientFrame(0xa, Buffer.alloc(0), { masked: false })],
    ['not final (a fragmented control frame)', clientFrame(0xa, Buffer.alloc(0), { fin: false })],
    ['with the 16-bit length form (126 bytes)', clientFrame(0xa, Buffer.alloc(126), { extendedLength: true })]
  ] as const
  for (const [what, frame] of rejected) {
    const { peer, counted, answer } = await pongCounting(app, url, 'bad')
    const before = counted()
    await answer(frame, () => closeCodeIn(peer.received()) !== undefined)
    t.equal(closeCodeIn(peer.received()), CloseCode.PROTOCOL_ERROR, `a pong ${what}: closed with 1002`)
    t.equal(counted(), before, 'and not counted')
    peer.destroy()
    await waitFor(() => app.stabilizer.getConnectionCount() === 0)
  }
})

void t.test('a silent peer is terminated within interval + timeout, not before the timeout, and onDisconnect says why', async (t) => {
  const interval = 400
  const timeout = 200
  const { app, url, disconnects } = await heartbeatApp({ heartbeatInterval: interval, heartbeatTimeout: timeout })
  t.teardown(() => app.close())
  const silent = await openRawPeer(url, '/ws/silent')
  const connectedAt = performance.now()
  await waitFor(() => disconnects.length === 1, 3000)
  const ping = pingsIn(silent.received())
  t.equal(ping, 1, 'one ping, never answered')
  const [gone] = disconnects
  t.match(gone, { id: 'silent', code: CloseCode.ABNORMAL, reason: 'heartbeat_timeout', lastRtt: undefined })
  const detectedAfter = gone.at - connectedAt
  t.ok(detectedAfter <= interval + timeout + 250, `detected after ${Math.round(detectedAfter)} ms`)
  t.ok(detectedAfter >= interval / 2 + timeout, 'not before the first ping plus the timeout')
  t.equal(app.stabilizer.getStats().heartbeat.timeouts, 1)
  t.same(app.stabilizer.getStats().closedByCause, { heartbeat_timeout: 1 })
  t.equal(app.stabilizer.getConnectionCount(), 0, 'the slot is free')
  silent.destroy()
})

void t.test('anyMessageIsAlive: a peer that sends messages but never pongs stays (default), or is terminated (false)', async (t) => {
  for (const anyMessageIsAlive of [true, false]) {
    const { app, url, disconnects } = await heartbeatApp({ heartbeatInterval: 200, heartbeatTimeout: 100, anyMessageIsAlive })
    const peer = await openRawPeer(url, '/ws/chatty')
    const chatter = setInterval(() => peer.sendText('still here'), 20)
    await new Promise((resolve) => setTimeout(resolve, 1000))
    clearInterval(chatter)
    t.equal(disconnects.length, anyMessageIsAlive ? 0 : 1, `anyMessageIsAlive: ${anyMessageIsAlive}`)
    t.ok(pingsIn(peer.received()) >= 1, 'it was pinged')
    peer.destroy()
    await app.close()
  }
})

void t.test('heartbeatTimeout 0 keeps pinging a silent peer and never terminates it', async (t) => {
  const { app, url, disconnects } = await heartbeatApp({ heartbeatInterval: 100, heartbeatTimeout: 0 })
  t.teardown(() => app.close())
  const silent = await openRawPeer(url, '/ws/silent')
  await new Promise((resolve) => setTimeout(resolve, 800))
  t.same(disconnects, [])
  t.ok(pingsIn(silent.received()) >= 5, `${pingsIn(silent.received())} pings`)
  silent.destroy()
})

void t.test('heartbeatInterval 0 turns heartbeats off: no ping, no timer', async (t) => {
  const before = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
  const { app, url, disconnects } = await heartbeatApp({ heartbeatInterval: 0 })
  t.teardown(() => app.close())
  const silent = await openRawPeer(url, '/ws/silent')
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  t.equal(process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length, before, 'no heartbeat timer')
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(silent.received().length, 0)
  t.same(disconnects, [])
  t.match(app.stabilizer.getStats().heartbeat, { pingsSent: 0, intervalMs: 0 })
  silent.destroy()
})

void t.test('custom heartbeat: JSON pings, pongs hidden from the handler, RTT measured, silence terminated', async (t) => {
  const { app, url, disconnects, seenByHandler } = await heartbeatApp({ heartbeatInterval: 200, heartbeatTimeout: 150, heartbeatType: 'custom' })
  t.teardown(() => app.close())
  const texts: string[] = []
  const answering = await openClient(`${url}/ws/answering`)
  answering.on('message', (data) => {
    const text = String(data)
    texts.push(text)
    const message = JSON.parse(text) as { type: string, ts: number }
    if (message.type === 'ping') answering.send(texts.length % 2 === 0 ? 'pong' : '{"type":"pong"}')
  })
  answering.send('hello app')
  const mute = new WebSocket(`${url}/ws/mute`) // answers protocol pings, not application ones
  await once(mute, 'open')
  await waitFor(() => disconnects.length === 1, 3000)
  t.match(disconnects[0], { id: 'mute', reason: 'heartbeat_timeout' })
  t.ok(texts.length >= 1)
  t.match(JSON.parse(texts[0]), { type: 'ping', ts: Number })
  await waitFor(() => texts.length >= 3, 3000)
  t.same(seenByHandler, ['hello app'], 'the handler never saw a pong')
  t.type(app.stabilizer.getConnection('answering')?.lastRtt, 'number')
  t.equal(app.stabilizer.getStats().heartbeat.type, 'custom')
  answering.terminate()
})

void t.test('custom heartbeat with custom messages; handlePong for apps that route messages themselves', async (t) => {
  const { app, url, disconnects, seenByHandler } = await heartbeatApp({
    heartbeatInterval: 200,
    heartbeatTimeout: 150,
    heartbeatType: 'custom',
    customPing: (ts) => `PING ${ts}`,
    isCustomPong: (data) => data.toString().startsWith('PONG')
  })
  t.teardown(() => app.close())
  const client = await openClient(`${url}/ws/c`)
  client.on('message', (data) => { if (String(data).startsWith('PING')) client.send('PONG') })
  const manual = await openClient(`${url}/ws/manual`)
  manual.on('message', () => { app.stabilizer.handlePong('manual') })
  await new Promise((resolve) => setTimeout(resolve, 900))
  t.same(disconnects, [])
  t.same(seenByHandler, [])
  t.equal(app.stabilizer.handlePong('nobody'), false)
  t.type(app.stabilizer.getConnection('manual')?.lastRtt, 'number')
  client.terminate()
  manual.terminate()
})

void t.test('the heartbeat options are validated together', async (t) => {
  const cases: Array<[StabilizerOptions, RegExp]> = [
    [{ heartbeatInterval: 0, heartbeatTimeout: 1000 }, /heartbeatTimeout.*no effect/],
    [{ customPing: () => 'x' }, /customPing.*heartbeatType: 'custom'/],
    [{ heartbeatType: 'ping', isCustomPong: () => true }, /isCustomPong/],
    [{ heartbeatType: 'pong' as never }, /heartbeatType/]
  ]
  for (const [options, message] of cases) {
    const app = Fastify()
    const err = await (async () => { await app.register(stabilizer, options) })().then(() => undefined, (e: unknown) => e as Error)
    t.match(err, { code: 'FST_WS_STABILIZER_INVALID_OPTION', message })
    await app.close()
  }
  for (const options of [{ heartbeatInterval: 1000, heartbeatTimeout: 1000 }, { heartbeatInterval: 1000, heartbeatTimeout: 3000 }, { heartbeatInterval: 0 }]) {
    const app = Fastify()
    await app.register(stabilizer, options)
    await app.close()
  }
  t.pass('a timeout equal to or above the interval is accepted')
})

void t.test('server pings never reach the app as messages', async (t) => {
  const { app, url } = await heartbeatApp({ heartbeatInterval: 100, heartbeatTimeout: 50 })
  t.teardown(() => app.close())
  const peer = await openRawPeer(url, '/ws/p')
  await waitFor(() => pingsIn(peer.received()) >= 1)
  t.notOk(framesIn(peer.received()).some((frame) => frame.opcode === 0x1), 'no text frame was sent')
  peer.destroy()
})
