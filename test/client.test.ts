import t from 'tap'
import type { IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { WebSocketServer, WebSocket } from 'ws'
import { StabilizedWebSocket, backoffDelay, clampDelay, type StabilizedWebSocketOptions } from '../lib/client/index.js'
import { binaryMessageFrame, followFrame, readOffer, textMessageFrame, textPayload, unfollowFrame, type ProtocolOffer, type Welcome } from '../lib/protocol.js'
import { recordEvents } from './fixtures/client-events.js'

// The client against a small `stabilizer.v1` server written here with plain `ws`, over real
// sockets: the frames are the ones PROTOCOL.md gives, and each test says what the server does.

/** One connection to the fake server, with what its handshake offered and every frame the client sent. */
interface FakeConnection {
  readonly socket: WebSocket
  readonly clientId: string
  readonly protocols: string[]
  readonly offer: ProtocolOffer
  /** Text frames parsed as JSON (the raw text when it is not JSON), binary ones as bytes. */
  readonly frames: Array<Record<string, unknown> | Buffer | string>
  closed: { code: number, reason: string } | undefined
}

function parseOrRaw (text: string): Record<string, unknown> | string {
  try {
    return JSON.parse(text) as Record<string, unknown>
  } catch {
    return text
  }
}

/** The frames of type `t` the client sent on a connection. */
function framesOf (connection: FakeConnection, t: string): Array<Record<string, unknown>> {
  return connection.frames.filter((f): f is Record<string, unknown> => typeof f === 'object' && !Buffer.isBuffer(f) && f.t === t)
}

type TestContext = { teardown: (fn: () => unknown) => void }

class FakeStabilizer {
  readonly connections: FakeConnection[] = []
  /** What the server does with a new connection; by default it welcomes a new session. */
  onConnection: (connection: FakeConnection) => void = (connection) => this.welcome(connection)
  url = ''
  private readonly clients: StabilizedWebSocket[] = []

  private constructor (private readonly wss: WebSocketServer) {
    wss.on('connection', (socket: WebSocket, request: IncomingMessage) => {
      const header = request.headers['sec-websocket-protocol']
      const connection: FakeConnection = {
        socket,
        clientId: decodeURIComponent((request.url ?? '').split('/').pop()!),
        protocols: header === undefined ? [] : header.split(',').map((p) => p.trim()),
        offer: readOffer(header),
        frames: [],
        closed: undefined
      }
      socket.on('message', (data: Buffer, binary) => { connection.frames.push(binary ? data : parseOrRaw(data.toString())) })
      socket.on('close', (code, reason) => { connection.closed = { code, reason: reason.toString() } })
      this.connections.push(connection)
      this.onConnection(connection)
    })
  }

  /** A server on 127.0.0.1, port 0. */
  static async start (t: TestContext): Promise<FakeStabilizer> {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (protocols) => protocols.has('stabilizer.v1') ? 'stabilizer.v1' : false })
    await new Promise((resolve) => wss.once('listening', resolve))
    const server = new FakeStabilizer(wss)
    server.url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`
    t.teardown(async () => {
      // A failed assertion must not leave a client reconnecting forever.
      for (const client of server.clients) client.close()
      for (const client of wss.clients) client.terminate()
      await new Promise((resolve) => wss.close(resolve))
    })
    return server
  }

  /** A client of this server, closed when the test ends. */
  client (path: string, options: StabilizedWebSocketOptions = {}): StabilizedWebSocket {
    // ws's own class, as it is: that this type-checks is the newcomer issue's fix.
    const client = new StabilizedWebSocket(`${this.url}${path}`, { WebSocket, ...options })
    this.clients.push(client)
    return client
  }

  /** Sends the welcome: a new session following `*` and its own stream at 0, unless `fields` say otherwise. */
  welcome (connection: FakeConnection, fields: Partial<Welcome> = {}): void {
    const welcome: Welcome = {
      t: 'welcome',
      v: 1,
      clientId: connection.clientId,
      sessionId: `session-${connection.clientId}`,
      secret: 'connection-secret',
      token: `token-${this.connections.length}`,
      tokenExpiresAt: Date.now() + 60_000,
      heartbeat: { interval: 0, timeout: 0 },
      positions: { '*': ['E', 0], [`c:${connection.clientId}`]: ['C', 0] },
      resume: null,
      ...fields
    }
    connection.socket.send(JSON.stringify(welcome))
  }

  /** A text message at a position (`''`, `''`, 0: none). */
  text (connection: FakeConnection, stream: string, epoch: string, seq: number, text: string): void {
    connection.socket.send(textMessageFrame(stream, epoch, seq, textPayload(text)), { binary: false })
  }

  binary (connection: FakeConnection, stream: string, epoch: string, seq: number, bytes: number[]): void {
    connection.socket.send(binaryMessageFrame(stream, epoch, seq, Buffer.from(bytes)), { binary: true })
  }

  /** The application messages (`{"t":"m"}` texts) the client sent on a connection. */
  texts (connection: FakeConnection): unknown[] {
    return framesOf(connection, 'm').map((f) => f.d)
  }
}

async function until (condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const start = Date.now()
  while (!condition()) {
    if (Date.now() - start > timeoutMs) throw new Error('until: timed out')
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

const fast = { minDelay: 10, initialDelay: 20 }

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

void t.test('a session: positions from the welcome and each message, payloads without the envelope', async (t) => {
  const server = await FakeStabilizer.start(t)
  server.onConnection = (c) => server.welcome(c, { positions: { '*': ['E', 4], 'c:kim': ['K', 0] } })
  const client = server.client('/ws/kim')
  const log = recordEvents(client)
  await until(() => client.readyState === StabilizedWebSocket.OPEN)
  t.equal(client.clientId, 'kim')
  t.equal(client.sessionId, 'session-kim')
  t.same(client.positions, { '*': ['E', 4], 'c:kim': ['K', 0] }, 'the welcome\'s positions')
  const copy = client.positions
  copy['*'][1] = 99
  delete copy['c:kim']
  t.same(client.positions, { '*': ['E', 4], 'c:kim': ['K', 0] }, 'positions is a copy: changing it changes nothing')

  const [c] = server.connections
  t.same(c.protocols, ['stabilizer.v1'], 'a first connection offers the subprotocol alone')
  server.text(c, 'c:kim', 'K', 1, 'plain "text"')
  server.text(c, 'c:kim', 'K', 2, '{"a":1}')
  server.binary(c, 'c:kim', 'K', 3, [9, 8, 7])
  server.text(c, '*', 'E', 5, 'to all')
  server.text(c, '', '', 0, 'not recorded')
  server.binary(c, '', '', 0, [1])
  // Ignored: not JSON, a frame of a later version, a binary frame cut inside its header.
  c.socket.send('not json')
  c.socket.send('{"t":"from-the-future","x":1}')
  c.socket.send(Buffer.from([0, 9, 0x67]), { binary: true })
  server.text(c, '*', 'E', 6, 'last')
  await until(() => log.of('message').length === 7)
  const data = log.data()
  t.same(data.filter((d) => typeof d === 'string'), ['plain "text"', '{"a":1}', 'to all', 'not recorded', 'last'])
  t.same([...new Uint8Array(data[2] as ArrayBuffer)], [9, 8, 7], 'binary: the bytes after the header, as an ArrayBuffer')
  t.same([...new Uint8Array(data[5] as ArrayBuffer)], [1])
  t.same(client.positions, { '*': ['E', 6], 'c:kim': ['K', 3] }, 'each stream at its last message; the positionless ones moved nothing')

  c.socket.send('{"t":"ping","ts":42}')
  await until(() => c.frames.length === 1)
  t.equal(client.send('hello server'), 'sent')
  t.equal(client.send(new Uint8Array([5, 6])), 'sent')
  await until(() => c.frames.length === 3)
  t.same(c.frames[0], { t: 'pong', ts: 42 }, 'a ping is answered with its ts')
  t.same(c.frames[1], { t: 'm', d: 'hello server' }, 'text goes in the envelope')
  t.same(c.frames[2], Buffer.from([5, 6]), 'bytes go as they are')

  client.close()
  await until(() => log.of('close').length === 1 && c.closed !== undefined)
  t.same(c.closed, { code: 1000, reason: '' })
  t.same(log.of('close').map((e) => ({ code: e.code, willRetry: e.willRetry })), [{ code: 1000, willRetry: false }])
  t.equal(client.readyState, StabilizedWebSocket.CLOSED)
  t.equal(client.send('late'), 'dropped', 'nothing is sent after close()')
  t.same(framesOf(c, 'ack'), [], 'no acknowledgements: the protocol has none')
})

void t.test('duplicates are dropped by position; another epoch starts over; follow and unfollow', async (t) => {
  const server = await FakeStabilizer.start(t)
  server.onConnection = (c) => server.welcome(c, { positions: { '*': ['E', 10] } })
  const client = server.client('/ws/ann')
  const log = recordEvents(client)
  await until(() => client.readyState === StabilizedWebSocket.OPEN)
  const [c] = server.connections
  server.text(c, '*', 'E', 9, 'before the welcome position')
  server.text(c, '*', 'E', 10, 'at the welcome position')
  server.binary(c, '*', 'E', 10, [0])
  server.text(c, '*', 'E', 11, 'e11')
  server.text(c, '*', 'E', 11, 'e11 again')
  c.socket.send(followFrame('g:room', 'R', 5))
  server.text(c, 'g:room', 'R', 5, 'before the follow position')
  server.text(c, 'g:room', 'R', 6, 'r6')
  server.text(c, '*', 'E', 12, 'e12')
  await until(() => log.of('message').length === 3)
  t.same(log.texts(), ['e11', 'r6', 'e12'], 'only messages past the position held in their epoch')
  t.same(client.positions, { '*': ['E', 12], 'g:room': ['R', 6] }, 'follow added the group\'s stream')

  // The server lost the history of `*`: its new epoch counts from 1 again.
  server.text(c, '*', 'F', 1, 'f1')
  // A follow for a stream already held, from an older position, does not step it back.
  c.socket.send(followFrame('g:room', 'R', 2))
  server.text(c, 'g:room', 'R', 6, 'r6 again')
  c.socket.send(unfollowFrame('g:room'))
  server.text(c, '*', 'F', 2, 'f2')
  await until(() => log.of('message').length === 5)
  t.same(log.texts().slice(3), ['f1', 'f2'])
  t.same(client.positions, { '*': ['F', 2] }, 'unfollow forgot the group\'s stream')
  client.close()
})

void t.test('cut abruptly: it reconnects offering its token and positions, and gets what it missed once, in order', async (t) => {
  const server = await FakeStabilizer.start(t)
  // The server's streams: what it published, numbered per stream.
  const streams = new Map<string, string[]>([['*', []], ['c:lou', []]])
  const publish = (stream: string, text: string, to?: FakeConnection): void => {
    const log = streams.get(stream)!
    log.push(text)
    if (to !== undefined) server.text(to, stream, stream === '*' ? 'E' : 'L', log.length, text)
  }
  const published: string[] = []
  const next = (to?: FakeConnection): void => {
    const n = published.length
    published.push(`m${n}`)
    publish(n % 3 === 0 ? '*' : 'c:lou', `m${n}`, to)
  }
  server.onConnection = (c) => {
    if (server.connections.length === 1) {
      server.welcome(c, { positions: { '*': ['E', 0], 'c:lou': ['L', 0] }, token: 'token-1' })
      for (let i = 0; i < 50; i++) next(c)
      return
    }
    // The resume: replay each stream from its offered position, starting two early (a server
    // may send again what the client has; the client drops it), in publication order.
    const offered = c.offer.positions!
    const replay = published.filter((text) => {
      const n = Number(text.slice(1))
      const stream = n % 3 === 0 ? '*' : 'c:lou'
      return streams.get(stream)!.indexOf(text) + 1 > offered[stream][1] - 2
    })
    server.welcome(c, { positions: offered, resume: { outcome: 'full', stateRestored: true, replayed: replay.length - 4, missed: 0, historyLost: false } })
    for (const text of replay) {
      const n = Number(text.slice(1))
      const stream = n % 3 === 0 ? '*' : 'c:lou'
      server.text(c, stream, stream === '*' ? 'E' : 'L', streams.get(stream)!.indexOf(text) + 1, text)
    }
    for (let i = 0; i < 10; i++) next(c)
  }
  const client = server.client('/ws/lou', fast)
  const log = recordEvents(client)
  await until(() => log.of('message').length === 50)
  const held = client.positions
  t.same(held, { '*': ['E', 17], 'c:lou': ['L', 33] })
  server.connections[0].socket.terminate()
  // Published while the client is away: only a replay can bring these.
  for (let i = 0; i < 20; i++) next()
  await until(() => log.of('message').length === 80)
  const second = server.connections[1]
  t.equal(second.protocols[0], 'stabilizer.v1')
  t.equal(second.protocols[1], 'stabilizer.token.token-1', 'the token, as a subprotocol entry')
  t.match(second.protocols[2], /^stabilizer\.pos\.[\w-]+$/)
  t.same(JSON.parse(Buffer.from(second.protocols[2].slice('stabilizer.pos.'.length), 'base64url').toString()), held, 'the positions: base64url JSON of what the client held')
  t.same(log.texts(), published, `all ${published.length} messages, in order, once`)
  t.match(log.of('close'), [{ code: 1006, willRetry: true }])
  t.same(log.of('resumed').map((e) => e.resume), [{ outcome: 'full', stateRestored: true, replayed: 20, missed: 0, historyLost: false }], 'the welcome\'s report, as it came')
  t.same(client.positions, { '*': ['E', 27], 'c:lou': ['L', 53] })
  client.close()
})

void t.test('a resume whose history is gone: historyLost is reported and the new epoch counts from 1', async (t) => {
  const server = await FakeStabilizer.start(t)
  server.onConnection = (c) => {
    if (server.connections.length === 1) {
      server.welcome(c, { positions: { '*': ['E', 3] } })
      server.text(c, '*', 'E', 4, 'e4')
      return
    }
    server.welcome(c, { positions: { '*': ['F', 0] }, resume: { outcome: 'partial', stateRestored: false, replayed: 0, missed: 0, historyLost: true } })
    server.text(c, '*', 'F', 1, 'f1')
  }
  const client = server.client('/ws/ida', fast)
  const log = recordEvents(client)
  await until(() => log.of('message').length === 1)
  server.connections[0].socket.terminate()
  await until(() => log.of('message').length === 2)
  t.same(server.connections[1].offer.positions, { '*': ['E', 4] })
  t.same(log.texts(), ['e4', 'f1'], 'seq 1 of the new epoch is not a duplicate of seq 4 of the old one')
  t.same(log.of('resumed')[0].resume, { outcome: 'partial', stateRestored: false, replayed: 0, missed: 0, historyLost: true })
  t.same(client.positions, { '*': ['F', 1] })
  client.close()
})

void t.test('4003: the token and positions are forgotten and a new session begins at once', async (t) => {
  const server = await FakeStabilizer.start(t)
  server.onConnection = (c) => {
    const n = server.connections.length
    if (n === 1) server.welcome(c, { token: 'token-1', positions: { '*': ['E', 2], 'g:room': ['R', 7], 'c:ned': ['N', 1] } })
    else if (n === 2) c.socket.close(4003, 'Invalid reconnect token: already used')
    else server.welcome(c, { token: 'token-3', positions: { '*': ['E', 2], 'c:ned': ['M', 0] } })
  }
  const client = server.client('/ws/ned', fast)
  const log = recordEvents(client)
  await until(() => client.readyState === StabilizedWebSocket.OPEN)
  server.connections[0].socket.terminate()
  await until(() => log.of('resumed').length === 1)
  t.same(server.connections[1].offer, { offered: true, token: 'token-1', positions: { '*': ['E', 2], 'g:room': ['R', 7], 'c:ned': ['N', 1] } })
  t.same(server.connections[2].protocols, ['stabilizer.v1'], 'then neither token nor positions')
  t.same(log.of('close').map((e) => [e.code, e.willRetry]), [[1006, true], [4003, true]])
  t.equal(log.of('reconnecting')[1].delay, 0, 'at once after the refusal')
  t.same(log.of('resumed')[0].resume, { outcome: 'none', stateRestored: false, replayed: 0, missed: 0, historyLost: true, rejected: 'Invalid reconnect token: already used' }, 'what was missed is lost, and the reason is passed on')
  t.same(client.positions, { '*': ['E', 2], 'c:ned': ['M', 0] }, 'the new session\'s positions only')
  t.equal(client.readyState, StabilizedWebSocket.OPEN)

  // The next cut resumes with the new session's token.
  server.onConnection = (c) => server.welcome(c, { resume: { outcome: 'full', stateRestored: true, replayed: 0, missed: 0, historyLost: false } })
  server.connections[2].socket.terminate()
  await until(() => log.of('resumed').length === 2)
  t.equal(server.connections[3].offer.token, 'token-3')
  t.same(server.connections[3].offer.positions, { '*': ['E', 2], 'c:ned': ['M', 0] })
  client.close()
})

void t.test('the offline queue keeps what is sent while disconnected, bounded, and flushes it in order', async (t) => {
  const server = await FakeStabilizer.start(t)
  const client = server.client('/ws/max', { ...fast, queueMaxMessages: 3, queueMaxBytes: 300 })
  const results: string[] = []
  client.onclose = () => {
    // Counted at 3 bytes a character: larger than the whole queue.
    results.push(client.send('x'.repeat(101)))
    for (let i = 0; i < 5; i++) results.push(client.send(`queued ${i}`))
  }
  await until(() => client.readyState === StabilizedWebSocket.OPEN)
  t.equal(client.send('live'), 'sent')
  server.connections[0].socket.close(4000, 'come back')
  await until(() => server.connections.length === 2 && server.texts(server.connections[1]).length === 3)
  t.same(results, ['dropped', 'queued', 'queued', 'queued', 'queued', 'queued'], 'a message larger than the queue is dropped at once')
  t.equal(client.droppedMessages, 3, 'and so are the two oldest, all counted')
  t.same(server.texts(server.connections[0]), ['live'])
  t.same(server.texts(server.connections[1]), ['queued 2', 'queued 3', 'queued 4'], 'flushed in order after the welcome')
  t.equal(client.queuedMessages, 0)
  client.close()
})

void t.test('close codes: 1012 waits the server\'s hint, 1013 at least 5 s, 4500 and 1000 end it', async (t) => {
  const server = await FakeStabilizer.start(t)
  const client = server.client('/ws/ada', { ...fast, maxDelay: 500 })
  const log = recordEvents(client)
  await until(() => client.readyState === StabilizedWebSocket.OPEN)
  server.connections[0].socket.close(1012, 'service restart; retry-after-ms=123')
  await until(() => server.connections.length === 2 && client.readyState === StabilizedWebSocket.OPEN)
  t.equal(log.of('reconnecting')[0].delay, 123, 'the hinted delay')
  server.connections[1].socket.close(1012, 'service restart; retry-after-ms=999999')
  await until(() => log.of('reconnecting').length === 2)
  t.equal(log.of('reconnecting')[1].delay, 500, 'a hint past maxDelay waits maxDelay')
  await until(() => server.connections.length === 3 && client.readyState === StabilizedWebSocket.OPEN)
  server.connections[2].socket.close(1013, 'try again later')
  await until(() => log.of('reconnecting').length === 3)
  t.ok(log.of('reconnecting')[2].delay! >= 5000, `1013 waits ${log.of('reconnecting')[2].delay} ms`)
  client.close()
  t.equal(client.readyState, StabilizedWebSocket.CLOSED, 'close() while waiting to reconnect ends it')
  t.match(log.of('close').at(-1), { code: 1000, willRetry: false })

  for (const code of [4500, 1000]) {
    const other = server.client(`/ws/bo-${code}`, fast)
    const otherLog = recordEvents(other)
    await until(() => other.readyState === StabilizedWebSocket.OPEN)
    server.connections.at(-1)!.socket.close(code, 'bye')
    await until(() => otherLog.of('close').length === 1)
    t.match(otherLog.of('close')[0], { code, reason: 'bye', willRetry: false }, `${code} is terminal`)
    t.equal(otherLog.of('reconnecting').length, 0, 'no reconnect is scheduled')
    t.equal(other.readyState, StabilizedWebSocket.CLOSED)
  }
})

void t.test('maxRetries: the client gives up after that many failed attempts', async (t) => {
  const server = await FakeStabilizer.start(t)
  server.onConnection = (c) => c.socket.close(4000, 'not now')
  const client = server.client('/ws/gus', { ...fast, maxRetries: 2 })
  const log = recordEvents(client)
  await until(() => log.of('close').length === 3)
  t.same(log.of('close').map((e) => e.willRetry), [true, true, false])
  t.same(log.of('reconnecting').map((e) => e.attempt), [1, 2])
  t.equal(server.connections.length, 3, 'the first attempt and two retries')
  t.equal(client.readyState, StabilizedWebSocket.CLOSED)
})

void t.test('the dead-server watchdog: a server that stops sending is dropped with 4000 and the client reconnects', async (t) => {
  const server = await FakeStabilizer.start(t)
  let silent = false
  let pinger: ReturnType<typeof setInterval> | undefined
  t.teardown(() => clearInterval(pinger))
  server.onConnection = (c) => {
    server.welcome(c, { heartbeat: { interval: 300, timeout: 300 } })
    if (server.connections.length > 1) return
    let ts = 0
    // Pings well inside the deadline, then nothing, without closing: a path that went silent.
    pinger = setInterval(() => {
      if (++ts > 20) {
        silent = true
        clearInterval(pinger)
      } else {
        c.socket.send(`{"t":"ping","ts":${ts}}`)
      }
    }, 30)
  }
  const client = server.client('/ws/cal', fast)
  const log = recordEvents(client)
  let closedWhileSilent: boolean | undefined
  client.addEventListener('close', () => { closedWhileSilent ??= silent })
  await until(() => server.connections.length === 2 && client.readyState === StabilizedWebSocket.OPEN)
  t.equal(closedWhileSilent, true, 'dropped only once the pings stopped')
  t.match(log.of('close')[0], { code: 4000, reason: 'no heartbeat', willRetry: true })
  t.equal(log.of('reconnecting')[0].delay, 0, 'reconnects at once: not the client\'s fault')
  t.same(framesOf(server.connections[0], 'pong').map((f) => f.ts), Array.from({ length: 20 }, (_, i) => i + 1), 'every ping answered with its ts')
  await until(() => server.connections[0].closed !== undefined)
  t.equal(server.connections[0].closed!.code, 4000, 'the server is told why, if it still listens')
  client.close()
})

void t.test('the token is refreshed before it expires, and the fresh one is offered on resume', async (t) => {
  const server = await FakeStabilizer.start(t)
  server.onConnection = (c) => {
    if (server.connections.length > 1) return server.welcome(c)
    server.welcome(c, { token: 'token-old', tokenExpiresAt: Date.now() + 1500 })
    c.socket.on('message', (data: Buffer) => {
      if (data.toString() !== '{"t":"token"}') return
      c.socket.send(JSON.stringify({ t: 'token', token: 'token-new', expiresAt: Date.now() + 60_000 }))
      // Once this arrives, so has the token frame before it.
      server.text(c, '', '', 0, 'after the token')
    })
  }
  const client = server.client('/ws/flo', fast)
  const log = recordEvents(client)
  await until(() => log.of('message').length === 1)
  t.same(framesOf(server.connections[0], 'token'), [{ t: 'token' }], 'asked for a token before the old one expired')
  server.connections[0].socket.terminate()
  await until(() => server.connections.length === 2)
  t.equal(server.connections[1].offer.token, 'token-new')
  client.close()
})
