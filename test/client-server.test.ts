import t from 'tap'
import { WebSocket } from 'ws'
import { StabilizedWebSocket, type StabilizedWebSocketOptions } from '../lib/client/index.js'
import { buildApp, listen, waitFor, type TestApp } from './fixtures/server.js'
import { recordEvents } from './fixtures/client-events.js'

// The client library against the plugin itself (test/client.test.ts has it against a server
// written in the test): the two implementations of PROTOCOL.md agree.

const secrets = ['c'.repeat(32) + '-client-tests']

/** `ws` as the client's WebSocket, keeping every socket it makes so a test can cut one or read its frames. */
function trackedWebSocket () {
  const sockets: WebSocket[] = []
  class Tracked extends WebSocket {
    constructor (url: string, protocols?: string | string[]) {
      super(url, protocols)
      sockets.push(this)
    }
  }
  return { WebSocket: Tracked, sockets }
}

async function appWith (t: { teardown: (fn: () => unknown) => void }, options = {}): Promise<{ app: TestApp, url: string, client: (path: string, options?: StabilizedWebSocketOptions) => StabilizedWebSocket }> {
  const app = await buildApp({ secrets, ...options })
  const clients: StabilizedWebSocket[] = []
  t.teardown(async () => {
    for (const client of clients) client.close()
    await app.close()
  })
  const url = await listen(app)
  return {
    app,
    url,
    client: (path, clientOptions = {}) => {
      const client = new StabilizedWebSocket(`${url}${path}`, { WebSocket, ...clientOptions })
      clients.push(client)
      return client
    }
  }
}

void t.test('messages arrive without the envelope and move the positions of their streams', async (t) => {
  const { app, client: connect } = await appWith(t)
  const client = connect('/ws/kim')
  const log = recordEvents(client)
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN)
  t.equal(client.clientId, 'kim')
  const welcomed = client.positions
  t.same(Object.keys(welcomed).sort(), ['*', 'c:kim'], 'a session follows `*` and its own stream')
  await app.stabilizer.sendToClient('kim', 'plain text')
  await app.stabilizer.sendToClient('kim', { a: 1 })
  await app.stabilizer.sendToClient('kim', Buffer.from([9, 8, 7]))
  await app.stabilizer.broadcast('to all')
  await waitFor(() => log.of('message').length === 4)
  t.same(log.data().filter((d) => typeof d === 'string'), ['plain text', '{"a":1}', 'to all'])
  t.same([...new Uint8Array(log.data()[2] as ArrayBuffer)], [9, 8, 7])
  t.same(client.positions, { '*': [welcomed['*'][0], welcomed['*'][1] + 1], 'c:kim': [welcomed['c:kim'][0], welcomed['c:kim'][1] + 3] })
  t.equal(client.send('hello server'), 'sent')
  await waitFor(() => (app.received.get('kim') ?? []).length === 1)
  t.same(app.received.get('kim'), ['hello server'])
})

void t.test('joining and leaving a group: the client follows and unfollows its stream', async (t) => {
  const { app, client: connect } = await appWith(t)
  const client = connect('/ws/gia')
  const log = recordEvents(client)
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN)
  app.stabilizer.join('gia', 'room')
  await waitFor(() => client.positions['g:room'] !== undefined)
  await app.stabilizer.broadcast('to the room', { group: 'room' })
  await waitFor(() => log.of('message').length === 1)
  const [epoch, seq] = client.positions['g:room']
  t.ok(typeof epoch === 'string' && seq >= 1, 'the group\'s stream moved')
  app.stabilizer.leave('gia', 'room')
  await waitFor(() => client.positions['g:room'] === undefined)
  t.pass('unfollowed on leave')
})

void t.test('cut abruptly while the server keeps sending: it reconnects, resumes and misses nothing', async (t) => {
  const { app, url } = await appWith(t)
  const { WebSocket: Tracked, sockets } = trackedWebSocket()
  const client = new StabilizedWebSocket(`${url}/ws/lou`, { WebSocket: Tracked, minDelay: 10, initialDelay: 50 })
  t.teardown(() => client.close())
  const log = recordEvents(client)
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN)
  const run = { sending: true, next: 0 }
  const sender = (async () => {
    while (run.sending) {
      const n = run.next++
      // Both streams, so the replay has to interleave them in publication order.
      if (n % 3 === 0) await app.stabilizer.broadcast(`m${n}`)
      else await app.stabilizer.sendToClient('lou', `m${n}`)
      if (run.next % 10 === 0) await new Promise((resolve) => setTimeout(resolve, 1))
    }
  })()
  // A failed wait must not leave the sender running: it would keep the app from closing.
  t.teardown(async () => {
    run.sending = false
    await sender
  })
  await waitFor(() => log.of('message').length >= 100)
  sockets[0].terminate()
  await waitFor(() => log.of('resumed').length === 1)
  await waitFor(() => log.of('message').length >= run.next - 5 && run.next > 300)
  run.sending = false
  await sender
  await waitFor(() => log.of('message').length === run.next)
  t.same(log.data(), Array.from({ length: run.next }, (_, i) => `m${i}`), `all ${run.next} messages, in order, once`)
  t.match(log.of('resumed')[0].resume, { outcome: 'full', stateRestored: true, missed: 0, historyLost: false })
  t.match(log.of('close')[0], { code: 1006, willRetry: true })
  t.equal(sockets.length, 2)
})

void t.test('a token used by someone else: 4003, then a new session without token or positions', async (t) => {
  const { app, url } = await appWith(t)
  const { WebSocket: Tracked, sockets } = trackedWebSocket()
  const client = new StabilizedWebSocket(`${url}/ws/ned`, { WebSocket: Tracked, minDelay: 10, initialDelay: 20 })
  t.teardown(() => client.close())
  const log = recordEvents(client)
  let token = ''
  await waitFor(() => sockets.length === 1)
  sockets[0].on('message', (data: Buffer) => {
    const frame = JSON.parse(data.toString()) as { t: string, token?: string }
    if (frame.t === 'welcome') token = frame.token!
  })
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN && token !== '')
  t.equal(await app.stabilizer.validateReconnectToken(token), 'ned')
  sockets[0].terminate()
  await waitFor(() => log.of('resumed').length === 1)
  t.match(log.of('close').map((e) => e.code), [1006, 4003])
  t.match(log.of('resumed')[0].resume, { outcome: 'none', stateRestored: false, historyLost: true, rejected: 'Invalid reconnect token: already used' })
  t.equal(sockets.length, 3)
  t.same(sockets[2].protocol, 'stabilizer.v1')
  t.equal(client.readyState, StabilizedWebSocket.OPEN)
})

void t.test('1012 waits the server\'s hint; 4500 is terminal', async (t) => {
  const { app, client: connect } = await appWith(t)
  const client = connect('/ws/ada', { minDelay: 10, initialDelay: 20 })
  const log = recordEvents(client)
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN)
  const connection = app.stabilizer.getConnection('ada')!
  connection.socket.close(1012, 'service restart; retry-after-ms=123')
  await waitFor(() => log.of('reconnecting').length === 1)
  t.equal(log.of('reconnecting')[0].delay, 123, 'the hinted delay')
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN && app.stabilizer.getConnection('ada') !== connection)
  await app.stabilizer.disconnect('ada', 4500, 'replaced')
  await waitFor(() => log.of('close').length === 2)
  t.match(log.of('close')[1], { code: 4500, willRetry: false })
  t.equal(client.readyState, StabilizedWebSocket.CLOSED)
  t.equal(log.of('reconnecting').length, 1, 'no reconnect after 4500')
})
