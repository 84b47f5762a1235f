import t from 'tap'

declare const gc: () => void
import { buildApp, listen, waitFor } from './fixtures/server.js'
import { killProcess, startClientProcess } from './fixtures/processes.js'

const cap = 1_048_576 // the default maxBufferedAmount
const healthyCount = 990
const stoppedCount = 10
const messageSize = 16 * 1024
/** A fresh 16 KiB message per broadcast, as a real feed sends (binary: clients skip UTF-8 validation). */
const nextMessage = (i: number): Buffer => Buffer.alloc(messageSize, i % 256)

void t.test('stopped readers: each is disconnected once past the cap, RSS stays bounded, healthy clients keep receiving', async (t) => {
  const disconnected = new Map<string, { cause: string | undefined, at: number }>()
  // Heartbeats off: a stopped reader must be caught by the slow-consumer policy, not by the heartbeat.
  const app = await buildApp({ maxConnections: 2_000, heartbeatInterval: 0, onDisconnect: (connection) => { disconnected.set(connection.id, { cause: connection.closeCause, at: performance.now() }) } })
  t.teardown(() => app.close())
  const url = await listen(app)
  const healthy = [
    await startClientProcess(`${url}/ws/h{n}`, healthyCount / 2),
    await startClientProcess(`${url}/ws/g{n}`, healthyCount / 2)
  ]
  const stopped = await startClientProcess(`${url}/ws/stopped{n}`, stoppedCount)
  for (const child of [...healthy, stopped]) t.teardown(() => killProcess(child))
  await waitFor(() => app.stabilizer.getConnectionCount() === healthyCount + stoppedCount, 10_000)
  // Warm up with every client reading, so the baseline includes the heap that broadcasting
  // 16 KiB to 1 000 clients needs anyway (V8 grows its young generation under this load).
  // RSS is read after forced garbage collections (tap runs with --expose-gc), so that it
  // measures what is held, not garbage waiting for the next collection.
  const settledRss = (): number => { gc(); gc(); return process.memoryUsage().rss }
  for (let i = 0; i < 60; i++) {
    await app.stabilizer.broadcast(nextMessage(i))
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const baseline = settledRss()
  stopped.kill('SIGSTOP')
  let peak = baseline
  let peakBuffered = 0
  const started = performance.now()
  const deadline = started + 60_000
  for (let i = 1; disconnected.size < stoppedCount && performance.now() < deadline; i++) {
    await app.stabilizer.broadcast(nextMessage(i))
    peakBuffered = Math.max(peakBuffered, app.stabilizer.getMemoryUsage().bufferedBytes)
    if (i % 20 === 0) peak = Math.max(peak, settledRss())
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const elapsed = Math.round(performance.now() - started)
  const growth = peak - baseline
  const bound = cap * stoppedCount * 1.1
  t.equal(disconnected.size, stoppedCount, `all ${stoppedCount} stopped readers handled after ${elapsed} ms`)
  t.ok([...disconnected].every(([id, { cause }]) => id.startsWith('stopped') && cause === 'slow_consumer'), 'only the stopped readers, as slow consumers')
  t.ok(growth <= bound, `RSS growth ${(growth / 2 ** 20).toFixed(1)} MiB ≤ ${(bound / 2 ** 20).toFixed(1)} MiB`)
  let healthyDrops = 0
  for (const id of app.stabilizer.getActiveConnections()) healthyDrops += app.stabilizer.getConnection(id)!.droppedMessages
  t.equal(app.stabilizer.getConnectionCount(), healthyCount, 'every healthy client is still connected')
  t.equal(healthyDrops, 0, 'and never had a message dropped')
  t.ok(peakBuffered <= (cap + messageSize) * stoppedCount, `outbound buffers peaked at ${(peakBuffered / 2 ** 20).toFixed(1)} MiB`)
  t.comment(`stopped-readers run: ${elapsed} ms, RSS baseline ${(baseline / 2 ** 20).toFixed(1)} MiB, peak growth ${(growth / 2 ** 20).toFixed(1)} MiB, outbound buffers peak ${(peakBuffered / 2 ** 20).toFixed(1)} MiB`)
})
