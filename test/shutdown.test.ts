import t from 'tap'
import Fastify from 'fastify'
import { once } from 'node:events'
import net from 'node:net'
import type { WebSocket } from 'ws'
import stabilizer, { CloseCode } from '../lib/index.js'
import { buildApp, closeOf, listen, openClient, waitFor } from './fixtures/server.js'
import { frozenPeer } from './fixtures/processes.js'

void t.test('shutdown closes every client with 1012 and a spread retry hint, and reports', async (t) => {
  const app = await buildApp({ shutdownRetryDelay: 500, shutdownRetrySpread: 1000 })
  const url = await listen(app)
  const clients: WebSocket[] = []
  for (let i = 0; i < 20; i++) clients.push(await openClient(`${url}/ws/c${i}`))
  await waitFor(() => app.stabilizer.getConnectionCount() === 20)
  const closes = clients.map(closeOf)
  const report = await app.stabilizer.gracefulShutdown()
  t.match(report, { total: 20, closedGracefully: 20, terminated: 0 })
  t.type(report.durationMs, 'number')
  const hints = (await Promise.all(closes)).map(({ code, reason }) => {
    t.equal(code, CloseCode.SERVICE_RESTART)
    const hint = /^service restart; retry-after-ms=(\d+)$/.exec(reason)
    t.ok(hint, reason)
    return Number(hint?.[1])
  })
  t.ok(hints.every((ms) => ms >= 500 && ms <= 1500), 'hints within [delay, delay + spread]')
  t.ok(new Set(hints).size > 1, 'hints are spread, not one value for all')
  t.same(await app.stabilizer.gracefulShutdown(), report, 'a second call returns the same report')
  await app.close()
  t.same(app.stabilizer.getStats().closedByCause, { shutdown: 20 })
})

void t.test('shutdownCloseCode 1001 and a zero spread', async (t) => {
  const app = await buildApp({ shutdownCloseCode: 1001, shutdownRetryDelay: 0, shutdownRetrySpread: 0 })
  const url = await listen(app)
  const ws = await openClient(`${url}/ws/a`)
  const closed = closeOf(ws)
  await app.close()
  t.same(await closed, { code: CloseCode.GOING_AWAY, reason: 'going away; retry-after-ms=0' })
})

/** Whether a new listener can take `port` now (closed again at once). */
async function portIsFree (port: number): Promise<boolean> {
  const probe = net.createServer()
  try {
    await new Promise<void>((resolve, reject) => { probe.once('error', reject); probe.listen(port, '127.0.0.1', resolve) })
    return true
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error
    return false
  } finally {
    if (probe.listening) await new Promise((resolve) => probe.close(resolve))
  }
}

void t.test('app.close() releases the port before the drain, so a replacement can listen while old sockets drain', async (t) => {
  for (const release of [true, false]) {
    const app = await buildApp({ shutdownTimeout: 1000, ...(release ? {} : { shutdownReleasePort: false }) })
    const url = await listen(app)
    const port = Number(new URL(url).port)
    // A frozen peer never answers its close frame: the drain lasts until the deadline.
    await frozenPeer(t, `${url}/ws/frozen`, () => app.stabilizer.getConnectionCount() === 1)
    const closing = app.close()
    await waitFor(() => app.stabilizer.state === 'draining')
    t.equal(await portIsFree(port), release, release ? 'free while draining (default)' : 'held until the drain ends (shutdownReleasePort: false)')
    t.equal(app.stabilizer.state, 'draining', 'the drain was still running')
    await closing
    t.match(await app.stabilizer.gracefulShutdown(), { terminated: 1 })
    t.ok(await portIsFree(port), 'free once closed')
  }
})

void t.test('gracefulShutdown validates its deadline', async (t) => {
  const app = await buildApp()
  t.teardown(() => app.close())
  await t.rejects(app.stabilizer.gracefulShutdown(-1), RangeError)
  await t.rejects(app.stabilizer.gracefulShutdown(Number.NaN), RangeError)
  t.equal(app.stabilizer.state, 'running')
})

void t.test('a connection still closing at shutdown (replaced) is drained too', async (t) => {
  const app = await buildApp({ shutdownTimeout: 500, closeTimeout: 60_000 })
  const url = await listen(app)
  await frozenPeer(t, `${url}/ws/same`, () => app.stabilizer.getConnectionCount() === 1)
  const replacement = await openClient(`${url}/ws/same`)
  const closed = closeOf(replacement)
  await app.close()
  const report = await app.stabilizer.gracefulShutdown()
  t.match(report, { total: 2, closedGracefully: 1, terminated: 1 })
  t.equal((await closed).code, CloseCode.SERVICE_RESTART)
})

void t.test('a shutdown that starts while an upgrade is admitted closes the newcomer too', async (t) => {
  const app = Fastify()
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  await app.register(stabilizer, {
    identify: async () => { await gate; return 'late' }
  })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  const pending = openClient(`${url}/ws`).catch((err: Error & { statusCode?: number }) => err)
  await new Promise((resolve) => setTimeout(resolve, 50))
  const shutdown = app.stabilizer.gracefulShutdown()
  release()
  const outcome = await pending
  t.equal((outcome as { statusCode?: number }).statusCode, 503, 'identify finished after the shutdown began: refused')
  await shutdown
  await app.close()
})

void t.test('onConnect and onDisconnect hooks; a failing hook is logged, not fatal', async (t) => {
  const events: string[] = []
  const app = await buildApp({
    onConnect: (connection) => { events.push(`connect ${connection.id}`); if (connection.id === 'bad') throw new Error('hook boom') },
    onDisconnect: async (connection, code, reason) => { events.push(`disconnect ${connection.id} ${code} ${reason} ${connection.closeCause ?? ''}`); if (connection.id === 'bad') throw new Error('async hook boom') }
  })
  const url = await listen(app)
  const good = await openClient(`${url}/ws/good`)
  const bad = await openClient(`${url}/ws/bad`)
  await waitFor(() => events.length === 2)
  const closed = once(good, 'close')
  good.close(1000, 'done')
  await closed
  bad.terminate()
  await waitFor(() => events.length === 4)
  t.same(events.sort(), ['connect bad', 'connect good', 'disconnect bad 1006 connection_lost connection_lost', 'disconnect good 1000 done client_closed'])
  await app.close()
})

void t.test('regression: a frozen peer terminated at the shutdown deadline is reported as terminated, whatever closeTimeout is', async (t) => {
  const app = await buildApp({ shutdownTimeout: 600, closeTimeout: 200 })
  const url = await listen(app)
  await frozenPeer(t, `${url}/ws/frozen`, () => app.stabilizer.getConnectionCount() === 1)
  const started = performance.now()
  await app.close()
  const report = await app.stabilizer.gracefulShutdown()
  t.match(report, { total: 1, closedGracefully: 0, terminated: 1 })
  t.ok(performance.now() - started >= 550, 'the shutdown deadline, not closeTimeout, decided when to terminate')
})

void t.test('regression: the shutdown deadline fits in Fastify\'s pluginTimeout, so app.close() never fails with AVV_ERR_READY_TIMEOUT', async (t) => {
  const tooLong = Fastify({ pluginTimeout: 2_000 })
  const err = await (async () => { await tooLong.register(stabilizer, { shutdownTimeout: 1_600 }) })().then(() => undefined, (e: unknown) => e as Error & { code: string })
  t.match(err, { code: 'FST_WS_STABILIZER_INVALID_OPTION', message: /shutdownTimeout.*pluginTimeout \(2000 ms\)/ })
  await tooLong.close()

  // The default deadline (10 s) is capped to pluginTimeout − 500 ms.
  const app = Fastify({ pluginTimeout: 2_000 })
  await app.register(stabilizer)
  app.get('/ws/:clientId', { websocket: true }, () => {})
  const url = await listen(app)
  await frozenPeer(t, `${url}/ws/frozen`, () => app.stabilizer.getConnectionCount() === 1)
  const started = performance.now()
  await app.close()
  const elapsed = performance.now() - started
  t.ok(elapsed >= 1_400 && elapsed < 2_000, `closed in ${Math.round(elapsed)} ms, within pluginTimeout`)
  t.match(await app.stabilizer.gracefulShutdown(), { terminated: 1 })

  const unlimited = Fastify({ pluginTimeout: 0 })
  await unlimited.register(stabilizer, { shutdownTimeout: 60_000 })
  await unlimited.close()
})

void t.test('maxConcurrentCleanup: a shutdown starts that many closes per event-loop turn', async (t) => {
  const app = await buildApp({ maxConcurrentCleanup: 2 })
  const url = await listen(app)
  const clients: WebSocket[] = []
  for (let i = 0; i < 6; i++) clients.push(await openClient(`${url}/ws/c${i}`))
  await waitFor(() => app.stabilizer.getConnectionCount() === 6)
  const closing = (): number => 6 - app.stabilizer.getConnectionCount()
  const shutdown = app.stabilizer.gracefulShutdown()
  t.equal(closing(), 2, 'two closes started in the first turn')
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(closing(), 4, 'two more in the next')
  await shutdown
  await app.close()
})
