import t from 'tap'
import type { StabilizerOptions } from '../lib/index.js'
import { buildApp, listen, openClient, waitFor, withClients } from './fixtures/server.js'
import { openRawPeer } from './fixtures/raw-peer.js'

const cap = 256 * 1024
const chunk = Buffer.alloc(64 * 1024, 1)

/** A healthy client and a peer that never reads, then 64 KiB broadcasts until the stalled one hits the cap. */
async function stalledReader (options: StabilizerOptions) {
  const disconnects: Array<{ id: string, cause: string | undefined }> = []
  const app = await buildApp({ maxBufferedAmount: cap, ...options, onDisconnect: (connection) => { disconnects.push({ id: connection.id, cause: connection.closeCause }) } })
  const url = await listen(app)
  const healthy = await openClient(`${url}/ws/healthy`)
  let healthyReceived = 0
  healthy.on('message', () => { healthyReceived++ })
  const stalled = await openRawPeer(url, '/ws/stalled')
  stalled.socket.pause() // stops reading: the kernel buffers fill, then ws's
  await waitFor(() => app.stabilizer.getConnectionCount() === 2)
  const results = []
  for (let i = 0; i < 2000; i++) {
    const result = await app.stabilizer.broadcast(chunk)
    results.push(result)
    // The healthy client lives in this process: let it read between broadcasts.
    await new Promise((resolve) => setImmediate(resolve))
    if (result.dropped > 0 && results.filter((r) => r.dropped > 0).length >= 3) break
  }
  return { app, healthy, stalled, results, disconnects, healthyReceived: () => healthyReceived }
}

void t.test("slowConsumerPolicy 'drop': the stalled reader gets no new message, stays connected, memory stays bounded", async (t) => {
  const { app, healthy, stalled, results } = await stalledReader({ slowConsumerPolicy: 'drop' })
  t.teardown(() => app.close())
  const dropped = results.reduce((sum, r) => sum + r.dropped, 0)
  t.ok(dropped >= 3, `${dropped} messages dropped for the stalled reader`)
  t.ok(results.every((r) => r.total === 2 && r.sent + r.dropped === 2), 'every broadcast: sent to the healthy one, sent or dropped for the stalled one')
  const connection = app.stabilizer.getConnection('stalled')!
  t.equal(connection.state, 'open')
  t.equal(connection.droppedMessages, dropped)
  t.ok(connection.socket.bufferedAmount <= cap + chunk.length, `buffered ${connection.socket.bufferedAmount} ≤ cap + one message`)
  t.equal(await app.stabilizer.sendToClient('stalled', chunk), false, 'a direct send is dropped too')
  t.match(app.stabilizer.getStats().protection, { slowConsumerDrops: dropped + 1, slowConsumerDisconnects: 0 })
  t.ok(app.stabilizer.getMemoryUsage().bufferedBytes <= cap + chunk.length)
  healthy.terminate()
  stalled.destroy()
})

void t.test("slowConsumerPolicy 'disconnect' (default): the stalled reader is closed with 4002; the healthy one gets everything", async (t) => {
  const { app, healthy, stalled, results, disconnects, healthyReceived } = await stalledReader({ closeTimeout: 200 })
  t.teardown(() => app.close())
  const firstDrop = results.findIndex((r) => r.dropped > 0)
  t.ok(firstDrop > 0, `the cap was crossed after ${firstDrop} broadcasts`)
  t.same(results[firstDrop], { total: 2, sent: 1, failed: 0, skipped: 0, dropped: 1, published: true })
  t.ok(results.slice(firstDrop + 1).every((r) => r.total === 1), 'it is no longer a recipient')
  await waitFor(() => disconnects.length === 1, 3000)
  t.same(disconnects, [{ id: 'stalled', cause: 'slow_consumer' }])
  t.match(app.stabilizer.getStats().protection, { slowConsumerDisconnects: 1 })
  await waitFor(() => healthyReceived() === results.length, 5000)
  t.equal(healthyReceived(), results.length, 'the healthy client received every broadcast')
  healthy.terminate()
  stalled.destroy()
})

void t.test('a message larger than the cap still reaches a reader that keeps up', async (t) => {
  const { app, clients: [client] } = await withClients(t, { maxBufferedAmount: 1024 }, 'fast')
  const received: number[] = []
  client.on('message', (data: Buffer) => received.push(data.length))
  for (let i = 0; i < 5; i++) {
    t.equal(await app.stabilizer.sendToClient('fast', Buffer.alloc(10_000)), true)
  }
  await waitFor(() => received.length === 5)
  t.same(received, [10_000, 10_000, 10_000, 10_000, 10_000])
  client.terminate()
})

void t.test('maxBufferedAmount 0 turns the check off; slowConsumerPolicy then fails register', async (t) => {
  const err = await buildApp({ maxBufferedAmount: 0, slowConsumerPolicy: 'drop' }).then(() => undefined, (e: unknown) => e)
  t.match(err, { code: 'FST_WS_STABILIZER_INVALID_OPTION', message: /slowConsumerPolicy/ })
  const app = await buildApp({ maxBufferedAmount: 0 })
  t.teardown(() => app.close())
  const url = await listen(app)
  const stalled = await openRawPeer(url, '/ws/stalled')
  stalled.socket.pause()
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  for (let i = 0; i < 400; i++) {
    await app.stabilizer.broadcast(chunk)
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.ok(app.stabilizer.getConnection('stalled')!.socket.bufferedAmount > cap, 'nothing stops the buffer from growing')
  t.equal(app.stabilizer.getStats().protection.slowConsumerDrops, 0)
  stalled.destroy()
})
