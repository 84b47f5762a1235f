import t from 'tap'
import { WebSocket as WsWebSocket } from 'ws'
import { StabilizedWebSocket, backoffDelay, clampDelay, type StabilizedEvent, type WebSocketConstructor } from '../lib/client/index.js'
import { buildApp, listen, waitFor, type TestApp } from './fixtures/server.js'

const secrets = ['c'.repeat(32) + '-client-tests']

/** `ws` as the client's WebSocket, keeping every socket it makes so a test can cut one abruptly. */
function trackedWebSocket () {
  const sockets: WsWebSocket[] = []
  const Tracked = class extends WsWebSocket {
    constructor (url: string, protocols?: string | string[]) {
      super(url, protocols)
      sockets.push(this)
    }
  }
  return { WebSocket: Tracked as unknown as WebSocketConstructor, sockets }
}

function record (client: StabilizedWebSocket) {
  const events: Array<{ type: string, event: StabilizedEvent }> = []
  for (const type of ['open', 'message', 'close', 'reconnecting', 'resumed']) {
    client.addEventListener(type, (event) => events.push({ type, event: event as StabilizedEvent }))
  }
  return {
    events,
    of: (type: string) => events.filter((e) => e.type === type).map((e) => e.event),
    texts: () => events.filter((e) => e.type === 'message').map((e) => e.event.data)
  }
}

async function appWith (t: { teardown: (fn: () => unknown) => void }, options = {}): Promise<{ app: TestApp, url: string }> {
  const app = await buildApp({ secrets, ...options })
  t.teardown(async () => await app.close())
  return { app, url: await listen(app) }
}

void t.test('backoff: full jitter between the floor and the capped exponential, spread at the cap', async (t) => {
  const schedules = Array.from({ length: 1000 }, () => Array.from({ length: 12 }, (_, i) => backoffDelay(i + 1)))
  t.ok(schedules.every((s) => s.every((d, i) => d >= 250 && d <= Math.min(30_000, 1000 * 2 ** i))), 'every delay within [floor, ceiling]')
  t.equal(new Set(schedules.map((s) => s.join(','))).size, 1000, 'no two schedules identical')
  const atCap = schedules.map((s) => s[11])
  const mean = atCap.reduce((a, b) => a + b, 0) / atCap.length
  t.ok(Math.abs(mean - (250 + 30_000) / 2) < 30_000 * 0.05, `mean at the cap ${mean.toFixed(0)} ms ≈ midpoint`)
  t.ok(Math.min(...atCap) < 3000 && Math.max(...atCap) > 27_000, 'spread over the whole range at the cap')
  const exactlyCap = atCap.filter((d) => d === 30_000).length
  t.ok(exactlyCap < 10, `${exactlyCap} of 1000 at exactly the cap (socket.io collapses to the cap)`)
  const deciles = new Array(10).fill(0)
  for (const d of atCap) deciles[Math.min(9, Math.floor((d - 250) / 2975))]++
  t.ok(deciles.every((n) => n > 60 && n < 140), `uniform over deciles: ${deciles.join(' ')}`)
  t.equal(backoffDelay(1, {}, () => 0), 250)
  t.equal(backoffDelay(3, {}, () => 1), 4000)
  // A server's hint is honoured within the same bounds: never hammering, never waiting forever.
  t.equal(clampDelay(0), 250, 'a zero hint waits minDelay')
  t.equal(clampDelay(1234), 1234)
  t.equal(clampDelay(10 ** 9), 30_000, 'an absurd hint waits maxDelay')
  t.equal(clampDelay(5, { minDelay: 10, maxDelay: 5 }), 10, 'minDelay wins over a smaller maxDelay')
})

void t.test('messages arrive without the envelope; send is sent, and the handler gets the payload', async (t) => {
  const { app, url } = await appWith(t)
  const client = new StabilizedWebSocket(`${url}/ws/kim`, { WebSocket: WsWebSocket as unknown as WebSocketConstructor })
  const log = record(client)
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN)
  t.equal(client.clientId, 'kim')
  await app.stabilizer.sendToClient('kim', 'plain text')
  await app.stabilizer.sendToClient('kim', { a: 1 })
  await app.stabilizer.sendToClient('kim', Buffer.from([9, 8, 7]))
  await waitFor(() => log.of('message').length === 3)
  t.same(log.texts().slice(0, 2), ['plain text', '{"a":1}'])
  t.same([...new Uint8Array(log.texts()[2] as ArrayBuffer)], [9, 8, 7])
  t.equal(client.lastSeq, 3)
  t.equal(client.send('hello server'), 'sent')
  await waitFor(() => (app.received.get('kim') ?? []).length === 1)
  t.same(app.received.get('kim'), ['hello server'])
  client.close()
  await waitFor(() => log.of('close').length === 1)
  t.same(log.of('close').map((e) => ({ code: e.code, willRetry: e.willRetry })), [{ code: 1000, willRetry: false }])
  t.equal(client.readyState, StabilizedWebSocket.CLOSED)
  t.equal(client.send('late'), 'dropped', 'nothing is sent after close()')
})

void t.test('cut abruptly while the server keeps sending: it reconnects, resumes and misses nothing', async (t) => {
  const { app, url } = await appWith(t)
  const { WebSocket, sockets } = trackedWebSocket()
  const client = new StabilizedWebSocket(`${url}/ws/lou`, { WebSocket, minDelay: 10, initialDelay: 50 })
  const log = record(client)
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN)
  const run = { sending: true, next: 0 }
  const sender = (async () => {
    while (run.sending) {
      await app.stabilizer.sendToClient('lou', `m${run.next++}`)
      if (run.next % 10 === 0) await new Promise((resolve) => setTimeout(resolve, 1))
    }
  })()
  await waitFor(() => log.of('message').length >= 100)
  sockets[0].terminate()
  await waitFor(() => log.of('resumed').length === 1)
  await waitFor(() => log.of('message').length >= run.next - 5 && run.next > 300)
  run.sending = false
  await sender
  await waitFor(() => log.of('message').length === run.next)
  t.same(log.texts(), Array.from({ length: run.next }, (_, i) => `m${i}`), `all ${run.next} messages, in order, once`)
  t.match(log.of('resumed')[0].resume, { outcome: 'full', stateRestored: true, missed: 0 })
  t.match(log.of('close')[0], { code: 1006, willRetry: true })
  t.equal(sockets.length, 2)
  client.close()
})

void t.test('the offline queue keeps what is sent while disconnected, bounded, and flushes it in order', async (t) => {
  const { app, url } = await appWith(t)
  const client = new StabilizedWebSocket(`${url}/ws/max`, { WebSocket: WsWebSocket as unknown as WebSocketConstructor, minDelay: 20, initialDelay: 40, queueMaxMessages: 3 })
  const results: string[] = []
  client.onclose = () => {
    for (let i = 0; i < 5; i++) results.push(client.send(`queued ${i}`))
  }
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN)
  await app.stabilizer.disconnect('max', 4000, 'come back')
  await waitFor(() => (app.received.get('max') ?? []).length === 3)
  t.same(results, ['queued', 'queued', 'queued', 'queued', 'queued'])
  t.equal(client.droppedMessages, 2, 'the two oldest were dropped and counted')
  t.same(app.received.get('max'), ['queued 2', 'queued 3', 'queued 4'], 'flushed in order after the reconnect')
  client.close()
})

void t.test('close codes: terminal ones end it, 1012 waits the server\'s hint, a rejected token starts a new session', async (t) => {
  const { app, url } = await appWith(t)
  const { WebSocket, sockets } = trackedWebSocket()
  const client = new StabilizedWebSocket(`${url}/ws/ned`, { WebSocket, minDelay: 10, initialDelay: 20 })
  const log = record(client)
  let token = ''
  const sniff = (socket: WsWebSocket) => socket.on('message', (data: Buffer) => {
    const frame = JSON.parse(data.toString()) as { t: string, token?: string }
    if (frame.t === 'welcome') token = frame.token!
  })
  await waitFor(() => sockets.length === 1)
  sniff(sockets[0])
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN && token !== '')

  // Someone used the token first: the resume is refused in-band (4003) and a new session begins.
  t.equal(await app.stabilizer.validateReconnectToken(token), 'ned')
  sockets[0].terminate()
  await waitFor(() => log.of('resumed').length === 1)
  t.match(log.of('close').map((e) => e.code), [1006, 4003])
  t.match(log.of('resumed')[0].resume, { outcome: 'none', stateRestored: false, rejected: 'Invalid reconnect token: already used' })
  t.equal(client.readyState, StabilizedWebSocket.OPEN)

  // 1012 with retry-after-ms: the reconnect waits that long.
  const connection = app.stabilizer.getConnection('ned')!
  connection.socket.close(1012, 'service restart; retry-after-ms=123')
  await waitFor(() => log.of('reconnecting').length === 3)
  t.equal(log.of('reconnecting')[2].delay, 123, 'the hinted delay')
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN && app.stabilizer.getConnection('ned') !== connection)

  // 4500 (replaced) is terminal.
  await app.stabilizer.disconnect('ned', 4500, 'replaced')
  await waitFor(() => log.of('close').length === 4)
  t.match(log.of('close')[3], { code: 4500, willRetry: false })
  t.equal(client.readyState, StabilizedWebSocket.CLOSED)
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(app.stabilizer.getConnectionCount(), 0, 'it did not come back')
})
