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
  let armed = false
  app.get('/ws', { websocket: true }, () => {})
  // Instrumentation, not a mock: the scheduler's real tick runs and sends real pings. After a
  // tick that sent some, the loop is blocked in a check phase: the peers' pongs arrive while
  // nothing reads them, and libuv's next phase is the timers phase, so the scheduler's next tick
  // runs right after the block, before any poll phase has read those pongs — the timestamp
  // check the issue warns about. (A block in the timers phase itself would be followed by a
  // poll phase that reads the pongs first, and prove nothing.) The stalls start once every
  // client is on its batch (the 200 share one, sent over a few turns) and follow a batch's last
  // turn: the scheduler's timer is set again then (while a batch is being sent, deadlines are
  // walked by its next turn, after a poll phase). A last turn that is a continuation runs in a
  // check phase, so the block follows it at once and hides the pongs of that whole turn; after
  // a batch sent in one turn in the timers phase, it comes in the next check phase.
  const scheduler = (app.stabilizer as unknown as { heartbeat: { tick: () => void, counters: { pingsSent: number }, continuation: unknown } }).heartbeat
  const tick = scheduler.tick.bind(scheduler)
  const stall = (): void => {
    blockEventLoop(3 * timeout)
    stallsLeft--
    setTimeout(() => { stallPending = false }, 700)
  }
  scheduler.tick = () => {
    const sentBefore = scheduler.counters.pingsSent
    const continued = scheduler.continuation !== undefined
    tick()
    if (armed && scheduler.counters.pingsSent > sentBefore && scheduler.continuation === undefined && stallsLeft > 0 && !stallPending) {
      stallPending = true
      if (continued) stall()
      else setImmediate(stall)
    }
  }
  const url = await listen(app)
  const clients = await startClientProcess(`${url}/ws`, 200)
  t.teardown(() => killProcess(clients))
  await waitFor(() => app.stabilizer.getConnectionCount() === 200)
  // Two intervals: every client has had its jittered first ping and its second, on the batch.
  setTimeout(() => { armed = true }, 1200)
  await waitFor(() => stallsLeft === 0, 15_000)
  await new Promise((resolve) => setTimeout(resolve, 1500))
  const { heartbeat } = app.stabilizer.getStats()
  t.equal(heartbeat.timeouts, 0, 'nobody was terminated')
  t.equal(terminated, 0)
  t.equal(app.stabilizer.getConnectionCount(), 200)
  t.ok(heartbeat.reprieves > 0, `${heartbeat.reprieves} suspects were found alive in pending I/O (the stall really hid their pongs)`)
  await app.close()
})
