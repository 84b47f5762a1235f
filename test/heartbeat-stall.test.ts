import t from 'tap'
import Fastify from 'fastify'
import stabilizer from '../lib/index.js'
import { listen, waitFor } from './fixtures/server.js'
import { killProcess, startClientProcess } from './fixtures/processes.js'

function blockEventLoop (ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end) { /* a synchronous stall, as a long GC or a heavy request would cause */ }
}

void t.test('no false kills: 200 live clients survive event-loop stalls of 3× the timeout', async (t) => {
  const timeout = 300
  const app = Fastify()
  let terminated = 0
  await app.register(stabilizer, { heartbeatInterval: 600, heartbeatTimeout: timeout, onDisconnect: () => { terminated++ } })
  let stallsLeft = 3
  let stallPending = false
  app.get('/ws', { websocket: true }, () => {})
  // Instrumentation, not a mock: the scheduler's real tick runs and sends real pings. After a
  // tick that sent some, the loop is blocked in the next check phase (setImmediate): the peers'
  // pongs arrive while nothing reads them, and libuv's next phase is the timers phase, so the
  // scheduler's next tick runs right after the block, before any poll phase has read those
  // pongs — the timestamp check the issue warns about. (A block in the timers phase itself
  // would be followed by a poll phase that reads the pongs first, and prove nothing.)
  const scheduler = (app.stabilizer as unknown as { heartbeat: { tick: () => void, counters: { pingsSent: number } } }).heartbeat
  const tick = scheduler.tick.bind(scheduler)
  scheduler.tick = () => {
    const sentBefore = scheduler.counters.pingsSent
    tick()
    if (scheduler.counters.pingsSent > sentBefore && stallsLeft > 0 && !stallPending) {
      stallPending = true
      setImmediate(() => {
        blockEventLoop(3 * timeout)
        stallsLeft--
        setTimeout(() => { stallPending = false }, 700)
      })
    }
  }
  const url = await listen(app)
  const clients = await startClientProcess(`${url}/ws`, 200)
  t.teardown(() => killProcess(clients))
  await waitFor(() => app.stabilizer.getConnectionCount() === 200)
  await waitFor(() => stallsLeft === 0, 15_000)
  await new Promise((resolve) => setTimeout(resolve, 1500))
  const { heartbeat } = app.stabilizer.getStats()
  t.equal(heartbeat.timeouts, 0, 'nobody was terminated')
  t.equal(terminated, 0)
  t.equal(app.stabilizer.getConnectionCount(), 200)
  t.ok(heartbeat.reprieves > 0, `${heartbeat.reprieves} suspects were found alive in pending I/O (the stall really hid their pongs)`)
  await app.close()
})
