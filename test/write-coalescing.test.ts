import t from 'tap'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { WebSocket } from 'ws'
import { encodePositions, type Welcome } from '../lib/protocol.js'
import { openRawPeer } from './fixtures/raw-peer.js'
import { openClient, waitFor, withClients } from './fixtures/server.js'

/** Write system calls this process made so far (every thread's, /proc/self/io). */
function writeCalls (): number {
  const line = readFileSync('/proc/self/io', 'utf8').split('\n').find((l) => l.startsWith('syscw:'))
  return Number(line?.slice('syscw:'.length))
}

function collect (ws: WebSocket): string[] {
  const got: string[] = []
  ws.on('message', (data) => got.push(String(data)))
  return got
}

void t.test("one callback's broadcasts leave each socket in two writes, in order", async (t) => {
  const { app, clients } = await withClients(t, {}, 'a', 'b', 'c')
  const received = clients.map(collect)
  const count = 50
  const before = writeCalls()
  const results = await Promise.all(Array.from({ length: count }, async (_, i) => await app.stabilizer.broadcast(`m${i}`)))
  await nextTurn()
  const writes = writeCalls() - before
  t.ok(results.every((r) => r.sent === 3 && r.dropped === 0 && r.failed === 0), 'every broadcast sent to the three clients')
  // Without coalescing: one write per message per socket (150). With it: the first frame to
  // each socket at once, the other 49 together.
  t.ok(writes <= 2 * 3 + 2, `${writes} write calls for ${count} broadcasts to 3 sockets`)
  await waitFor(() => received.every((got) => got.length === count))
  const expected = Array.from({ length: count }, (_, i) => `m${i}`)
  for (const got of received) t.same(got, expected, 'every message, once, in order')
})

void t.test('sends through ws in the same callback keep their place among the broadcasts', async (t) => {
  const { app, clients } = await withClients(t, {}, 'a')
  const got = collect(clients[0])
  const sending: Array<Promise<unknown>> = []
  for (let i = 0; i < 10; i++) {
    sending.push(app.stabilizer.broadcast(`b${i}`))
    sending.push(app.stabilizer.sendToClient('a', `d${i}`))
  }
  const outcomes = await Promise.all(sending)
  t.ok(outcomes.every((o) => o === true || (o as { sent: number }).sent === 1), 'every send and broadcast reports the client reached')
  await waitFor(() => got.length === 20)
  // Broadcasts and direct sends are two paths; each keeps its own order.
  t.same(got.filter((m) => m.startsWith('b')), Array.from({ length: 10 }, (_, i) => `b${i}`))
  t.same(got.filter((m) => m.startsWith('d')), Array.from({ length: 10 }, (_, i) => `d${i}`))
})

void t.test('frames held back for one write do not count against the slow-consumer limit', async (t) => {
  // 40 broadcasts of 1 KiB in one callback: 40 KiB held for one write, the limit 4 KiB.
  const { app, clients } = await withClients(t, { maxBufferedAmount: 4096, slowConsumerPolicy: 'disconnect' }, 'a')
  const got = collect(clients[0])
  const payload = 'x'.repeat(1024)
  const results = await Promise.all(Array.from({ length: 40 }, async () => await app.stabilizer.broadcast(payload)))
  t.equal(results.reduce((sum, r) => sum + r.sent, 0), 40, 'all 40 sent')
  t.equal(results.reduce((sum, r) => sum + r.dropped, 0), 0, 'none dropped')
  await waitFor(() => got.length === 40)
  t.equal(app.stabilizer.getConnection('a')?.state, 'open', 'the reader, which keeps up, stays connected')
  t.equal(app.stabilizer.getStats().protection.slowConsumerDisconnects, 0)
})

void t.test('a close in the same callback follows the held frames; a terminate drops them quietly', async (t) => {
  const { app, url, clients } = await withClients(t, {}, 'a')
  const got = collect(clients[0])
  const closed = new Promise<number>((resolve) => clients[0].once('close', (code) => resolve(code)))
  // Still in the callback that wrote them (the frames are held) when the close is sent.
  await Promise.all(Array.from({ length: 5 }, async (_, i) => await app.stabilizer.broadcast(`m${i}`)))
  const disconnected = app.stabilizer.disconnect('a', 4001, 'bye')
  t.equal(await disconnected, true)
  t.equal(await closed, 4001, 'closed with the code given')
  t.same(got, ['m0', 'm1', 'm2', 'm3', 'm4'], 'the messages before the close arrived first')

  const b = await openClient(`${url}/ws/b`)
  await waitFor(() => app.stabilizer.getConnection('b') !== undefined)
  const gone = new Promise<void>((resolve) => b.once('close', () => resolve()))
  const result = await app.stabilizer.broadcast('to b')
  t.equal(result.sent, 1, 'handed to the socket')
  ;(app.stabilizer.getConnection('b')!.socket as WebSocket).terminate()
  await gone
  await waitFor(() => app.stabilizer.getConnectionCount() === 0)
  t.pass('the terminated connection is gone, nothing thrown')
})

void t.test("a resume's welcome and replay leave in one write", async (t) => {
  const { app, url } = await withClients(t, { secrets: ['s'.repeat(32) + '-coalescing-tests'] })
  const welcomeOf = async (ws: WebSocket): Promise<Welcome> => JSON.parse(String((await once(ws, 'message'))[0])) as Welcome
  const first = new WebSocket(`${url}/ws/r`, ['stabilizer.v1'])
  const welcome = await welcomeOf(first)
  await waitFor(() => app.stabilizer.getConnection('r') !== undefined)
  first.terminate()
  await waitFor(() => app.stabilizer.getConnection('r') === undefined)
  const missed = 300
  for (let i = 0; i < missed; i++) await app.stabilizer.broadcast(`m${i}`)

  const before = writeCalls()
  const offer = encodePositions(welcome.positions)!
  const second = new WebSocket(`${url}/ws/r`, ['stabilizer.v1', `stabilizer.token.${welcome.token!}`, `stabilizer.pos.${offer}`])
  const frames: Array<Record<string, unknown>> = []
  second.on('message', (data) => frames.push(JSON.parse(String(data)) as Record<string, unknown>))
  await waitFor(() => frames.length === missed + 1)
  const writes = writeCalls() - before
  t.match(frames[0], { t: 'welcome', resume: { outcome: 'full', replayed: missed } })
  t.same(frames.slice(1).map((frame) => frame.d), Array.from({ length: missed }, (_, i) => `m${i}`), 'the missed messages, in order')
  // Both ends of the handshake are in this process; the replay alone was one write per message.
  t.ok(writes <= 10, `${writes} write calls for the handshake, the welcome and ${missed} replayed messages`)
  second.terminate()
})

void t.test('a burst in one callback to a reader that stopped still meets the slow-consumer limit', async (t) => {
  const cap = 1_048_576
  const { app, url } = await withClients(t, { maxBufferedAmount: cap, slowConsumerPolicy: 'drop' })
  const stalled = await openRawPeer(url, '/ws/stalled')
  t.teardown(() => { stalled.socket.destroy() })
  stalled.socket.pause() // reads nothing: the kernel's buffers fill, then the stream's
  await waitFor(() => app.stabilizer.getConnection('stalled') !== undefined)
  const chunk = Buffer.alloc(64 * 1024, 7)
  // 200 × 64 KiB in one callback: far more than the kernel takes for a reader that stopped.
  const results = await Promise.all(Array.from({ length: 200 }, async () => await app.stabilizer.broadcast(chunk)))
  const dropped = results.reduce((sum, r) => sum + r.dropped, 0)
  t.ok(dropped > 0, `${dropped} of 200 dropped within the callback`)
  const waiting = app.stabilizer.getConnection('stalled')!.socket.bufferedAmount
  t.ok(waiting <= cap + 2 * chunk.length, `${waiting} bytes waiting in the stream, within the limit and a message or two`)
})
