import t from 'tap'
import { HeartbeatScheduler, HeartbeatState, pingBudgetMs, type HeartbeatHost } from '../lib/heartbeat.js'
import type { Connection } from '../lib/connection.js'

// The scheduler only reads a connection's heartbeat state and lifecycle state: plain objects
// stand in for connections here, and time is a fake clock. Real sockets: heartbeat-*.test.ts.
type FakeConnection = { id: string, state: 'open' | 'closing' | 'closed', heartbeat: HeartbeatState }

function connections (count: number): FakeConnection[] {
  return Array.from({ length: count }, (_, i) => ({ id: `c${i}`, state: 'open', heartbeat: new HeartbeatState() }))
}

function recordingHost (answer: (connection: FakeConnection) => void = () => {}) {
  const pings: Array<{ id: string, at: number }> = []
  const terminated: Array<{ id: string, at: number }> = []
  const host: HeartbeatHost = {
    sendPing: (connection) => {
      pings.push({ id: (connection as unknown as FakeConnection).id, at: performance.now() })
      answer(connection as unknown as FakeConnection)
      return true
    },
    terminate: (connection) => {
      terminated.push({ id: (connection as unknown as FakeConnection).id, at: performance.now() })
      ;(connection as unknown as FakeConnection).state = 'closed'
    }
  }
  return { host, pings, terminated }
}

const asConnection = (c: FakeConnection): Connection => c as unknown as Connection

/** Advances the fake clock in small steps so intervals and immediates interleave as in real time. */
function advance (t: { clock: { advance: (ms: number) => void } }, ms: number, step = 1): void {
  for (let elapsed = 0; elapsed < ms; elapsed += step) t.clock.advance(step)
}

void t.test('first pings are jittered over the ticks of [interval/2, interval]; later pings go out with the batch of their run of indices', async (t) => {
  t.clock.enter()
  const host = recordingHost((conn) => setTimeout(() => scheduler.alive(asConnection(conn), true), 20))
  const scheduler = new HeartbeatScheduler({ interval: 1000, timeout: 500 }, host.host)
  const batchMs = scheduler.pingBatchTicks * scheduler.tickMs
  t.equal(batchMs, 250, 'four batches per interval')
  t.equal(scheduler.batches, 4)
  const all = connections(1000)
  const start = performance.now()
  for (const c of all) scheduler.add(asConnection(c))
  advance(t, 3200 + scheduler.tickMs, 5)
  const byConnection = new Map<string, number[]>()
  for (const p of host.pings) byConnection.set(p.id, [...(byConnection.get(p.id) ?? []), p.at - start])
  t.equal(byConnection.size, 1000, 'every connection was pinged')
  const firsts = [...byConnection.values()].map((times) => times[0])
  t.ok(Math.min(...firsts) >= 500, `earliest first ping ${Math.min(...firsts)} ms`)
  t.ok(Math.max(...firsts) <= 1000, `latest first ping ${Math.max(...firsts)} ms`)
  const perTick = new Map<number, number>()
  for (const first of firsts) perTick.set(first, (perTick.get(first) ?? 0) + 1)
  // 21 ticks of 25 ms in [500, 1000]: ~48 first pings each.
  t.ok(perTick.size >= 18, `spread over ${perTick.size} ticks`)
  t.ok(Math.max(...perTick.values()) < 120, `no tick pings a crowd: ${[...perTick.values()].join(', ')}`)
  const [firstGaps, laterGaps] = [[] as number[], [] as number[]]
  for (const times of byConnection.values()) {
    firstGaps.push(times[1] - times[0])
    for (let i = 2; i < times.length; i++) laterGaps.push(times[i] - times[i - 1])
  }
  t.ok(firstGaps.every((gap) => gap > 0 && gap <= 1000), `second pings never late: ${Math.min(...firstGaps)}–${Math.max(...firstGaps)} ms after the first`)
  t.ok(laterGaps.length >= 1000 && laterGaps.every((gap) => gap === 1000), 'then exactly one interval apart')
  // Connections 0–255 share a batch, 256–511 the next one, and so on: each run's pings from the
  // second on go out at one moment of the interval, and the four runs' moments are the batches.
  const moments = [0, 1, 2, 3].map((run) => new Set(all.slice(run * 256, (run + 1) * 256).map((c) => byConnection.get(c.id)![1] % 1000)))
  t.ok(moments.every((moment) => moment.size === 1), `one moment per run: ${moments.map((moment) => [...moment].join('/')).join(', ')} ms`)
  const phases = moments.map((moment) => [...moment][0])
  t.same(phases.map((phase) => (phase - phases[0] + 1000) % 1000), [0, 250, 500, 750], 'the runs go out with the four batches, in index order')
  t.equal(host.terminated.length, 0)
  scheduler.stop()
})

void t.test('a ping is sent with the last tick of its batch at or before the moment it is due: never late', async (t) => {
  t.clock.enter()
  const answerAfter = 30
  const host = recordingHost((conn) => setTimeout(() => scheduler.alive(asConnection(conn), true), answerAfter))
  // 1 050 ms is not a whole number of 250 ms batches: each ping is due 1 050 ms after the last
  // and goes out with its batch before that, so the gaps are the four batches, 1 000 ms.
  const scheduler = new HeartbeatScheduler({ interval: 1050, timeout: 500 }, host.host)
  const batchMs = scheduler.pingBatchTicks * scheduler.tickMs
  t.equal(batchMs, 250)
  const [c] = connections(1)
  scheduler.add(asConnection(c))
  advance(t, 6000, 5)
  const gaps = host.pings.slice(1).map((p, i) => p.at - host.pings[i].at)
  t.ok(gaps.length >= 4, `${host.pings.length} pings`)
  t.ok(gaps.every((gap) => gap > 0 && gap <= 1050), `never late: gaps ${gaps.join(', ')}`)
  // The second ping waits for the first one's answer: where that came after the batch's tick, the
  // ping goes out at once, less than a tick after it, and the next one on the tick again.
  t.ok(gaps[1] > 1000 - scheduler.tickMs && gaps[1] <= 1000, 'from the second ping on, on its batch: 1 000 ms')
  t.ok(gaps.slice(2).every((gap) => gap === 1000), 'then exactly')
  t.equal(host.terminated.length, 0)
  scheduler.stop()
})

void t.test('the timer wakes the loop only when something is due, not at every tick', async (t) => {
  t.clock.enter()
  const host = recordingHost((conn) => setTimeout(() => scheduler.alive(asConnection(conn), true), 20))
  const scheduler = new HeartbeatScheduler({ interval: 1000, timeout: 500 }, host.host)
  let ticks = 0
  const tick = scheduler.tick.bind(scheduler)
  scheduler.tick = () => { ticks++; tick() }
  const [c] = connections(1)
  scheduler.add(asConnection(c))
  advance(t, 10_000, 5)
  t.ok(host.pings.length >= 9, `${host.pings.length} pings`)
  // One wake-up for each ping (the pong took the deadline out and the timer with it), and at
  // most one more for a timer that fired early by the loop's clock: 400 ticks of 25 ms passed.
  t.ok(ticks <= 2 * host.pings.length, `${ticks} wake-ups for ${host.pings.length} pings in ${10_000 / scheduler.tickMs} ticks`)
  scheduler.stop()
  const before = ticks
  advance(t, 5000, 50)
  t.equal(ticks, before, 'none after stop')
})

void t.test('a connection added while the timer waits for a later tick is pinged in [interval/2, interval]', async (t) => {
  t.clock.enter()
  const host = recordingHost((conn) => setTimeout(() => scheduler.alive(asConnection(conn), true), 20))
  const scheduler = new HeartbeatScheduler({ interval: 1000, timeout: 500 }, host.host)
  const [early, late] = connections(2)
  scheduler.add(asConnection(early))
  // The early connection's ping and deadline are behind: the timer now waits for its next ping.
  advance(t, 1700, 5)
  const addedAt = performance.now()
  scheduler.add(asConnection(late))
  advance(t, 1200, 5)
  const latePings = host.pings.filter((p) => p.id === late.id)
  t.equal(latePings.length, 1)
  const waited = latePings[0].at - addedAt
  t.ok(waited >= 500 && waited <= 1000 + scheduler.tickMs, `first ping ${waited} ms after it was added`)
  t.equal(host.terminated.length, 0)
  scheduler.stop()
})

void t.test('an answered ping keeps the connection; the next ping comes an interval after the last', async (t) => {
  t.clock.enter()
  const [c] = connections(1)
  const host = recordingHost((conn) => setTimeout(() => scheduler.alive(asConnection(conn), true), 30))
  // Ticks of 25 ms: the interval is four batches of ten ticks exactly (where it is not, pings
  // leave with the batch before: the next test).
  const scheduler = new HeartbeatScheduler({ interval: 1000, timeout: 500 }, host.host)
  scheduler.add(asConnection(c))
  advance(t, 5000, 5)
  t.equal(host.terminated.length, 0)
  t.ok(host.pings.length >= 4, `${host.pings.length} pings in 5 s`)
  const [firstGap, ...gaps] = host.pings.slice(1).map((p, i) => p.at - host.pings[i].at)
  // The first ping went out at a jittered tick, the second with its batch at or before it was due.
  t.ok(firstGap > 0 && firstGap <= 1000, `first gap ${firstGap}`)
  // Less than a tick short after a second ping that waited for its answer past the batch's tick.
  t.ok(gaps[0] > 1000 - scheduler.tickMs && gaps[0] <= 1000 + 2 * scheduler.tickMs, `gaps ${gaps.join(', ')}`)
  t.ok(gaps.slice(1).every((gap) => gap >= 1000 && gap <= 1000 + 2 * scheduler.tickMs), 'then one interval')
  t.equal(c.heartbeat.lastRtt, 30)
  t.equal(c.heartbeat.smoothedRtt, 30)
  // The first ping is jittered, so the last one may have gone out less than 30 ms before the end:
  // only the pings whose answer is due by now must have been counted.
  const now = performance.now()
  const answered = host.pings.filter((p) => p.at + 30 <= now).length
  t.match(scheduler.counters, { pingsSent: host.pings.length, pongsReceived: answered, timeouts: 0, reprieves: 0, longestTickMs: Number })
  scheduler.stop()
})

void t.test('an unanswered ping terminates the peer after the timeout, never before', async (t) => {
  t.clock.enter()
  const { host, pings, terminated } = recordingHost()
  const scheduler = new HeartbeatScheduler({ interval: 1000, timeout: 400 }, host)
  const [c] = connections(1)
  scheduler.add(asConnection(c))
  advance(t, 3000, 1)
  t.equal(pings.length, 1, 'no second ping to a suspect')
  t.equal(terminated.length, 1)
  const waited = terminated[0].at - pings[0].at
  t.ok(waited >= 400, `terminated ${waited} ms after the ping`)
  t.ok(waited <= 400 + scheduler.tickMs + 2, 'within a tick of the deadline')
  t.equal(scheduler.counters.timeouts, 1)
  t.equal(scheduler.scheduled, 0)
})

void t.test('smoothed RTT follows an exponential average', async (t) => {
  t.clock.enter()
  const delays = [100, 20, 20]
  const host = recordingHost((conn) => { const delay = delays.shift() ?? 20; setTimeout(() => scheduler.alive(asConnection(conn), true), delay) })
  const scheduler = new HeartbeatScheduler({ interval: 500, timeout: 300 }, host.host)
  const [c] = connections(1)
  scheduler.add(asConnection(c))
  // The first ping is jittered: drive the clock until three pings went out, then let the third answer arrive.
  for (let guard = 0; host.pings.length < 3 && guard < 5000; guard++) t.clock.advance(1)
  advance(t, 50, 1)
  t.equal(host.pings.length, 3)
  t.equal(c.heartbeat.lastRtt, 20)
  t.equal(c.heartbeat.smoothedRtt, 100 + 0.125 * (20 - 100) + 0.125 * (20 - (100 + 0.125 * (20 - 100))))
  scheduler.stop()
})

void t.test('proof of life without an RTT sample (any message) clears the pending ping', async (t) => {
  t.clock.enter()
  const host = recordingHost((conn) => setTimeout(() => scheduler.alive(asConnection(conn), false), 10))
  const scheduler = new HeartbeatScheduler({ interval: 500, timeout: 300 }, host.host)
  const [c] = connections(1)
  scheduler.add(asConnection(c))
  advance(t, 2000, 5)
  t.equal(host.terminated.length, 0)
  t.equal(c.heartbeat.lastRtt, undefined, 'no RTT from a message that is not a pong')
  t.equal(scheduler.counters.pongsReceived, 0)
  scheduler.stop()
})

void t.test('timeout 0 keeps pinging and never terminates', async (t) => {
  t.clock.enter()
  const { host, pings, terminated } = recordingHost()
  const scheduler = new HeartbeatScheduler({ interval: 200, timeout: 0 }, host)
  for (const c of connections(5)) scheduler.add(asConnection(c))
  advance(t, 2100, 5)
  t.equal(terminated.length, 0)
  t.ok(pings.length >= 5 * 9, `${pings.length} pings`)
  scheduler.stop()
})

void t.test('remove, closing sockets and stop leave nothing scheduled', async (t) => {
  t.clock.enter()
  const refusing: HeartbeatHost = { sendPing: () => false, terminate: () => t.fail('nobody is terminated') }
  const scheduler = new HeartbeatScheduler({ interval: 200, timeout: 100 }, refusing)
  const [a, b] = connections(2)
  scheduler.add(asConnection(a))
  scheduler.add(asConnection(b))
  scheduler.remove(asConnection(a))
  t.equal(scheduler.scheduled, 1)
  advance(t, 300, 5)
  t.equal(scheduler.scheduled, 0, 'a socket that refuses the ping (closing) leaves the wheel')
  scheduler.add(asConnection(a))
  scheduler.stop()
  t.equal(scheduler.scheduled, 0)
  scheduler.add(asConnection(b))
  t.equal(scheduler.scheduled, 0, 'nothing is scheduled after stop')
  advance(t, 1000, 50)
})

void t.test('a connection removed while its ping is being written is not scheduled again', async (t) => {
  t.clock.enter()
  const pinged: string[] = []
  const host: HeartbeatHost = {
    sendPing: (connection) => {
      pinged.push((connection as unknown as FakeConnection).id)
      scheduler.remove(connection) // as a host whose write closed the socket then and there
      return true
    },
    terminate: () => t.fail('nobody is terminated')
  }
  const scheduler = new HeartbeatScheduler({ interval: 200, timeout: 100 }, host)
  const all = connections(3)
  for (const c of all) scheduler.add(asConnection(c))
  advance(t, 1000, 5)
  t.same(pinged.sort(), all.map((c) => c.id).sort(), 'each was pinged once')
  t.equal(scheduler.scheduled, 0, 'and left nothing scheduled')
  t.ok(all.every((c) => c.heartbeat.index === -1 && c.heartbeat.slot === -1))
  scheduler.stop()
})

void t.test('a suspect that answered during the I/O phase is reprieved', async (t) => {
  t.clock.enter()
  let answerLate = true
  const host = recordingHost((conn) => {
    // The answer lands right after the deadline tick, before the verdict (two immediates later).
    if (answerLate) setTimeout(() => setImmediate(() => scheduler.alive(asConnection(conn), true)), 300)
    answerLate = false
  })
  const scheduler = new HeartbeatScheduler({ interval: 1000, timeout: 300 }, host.host)
  const [c] = connections(1)
  scheduler.add(asConnection(c))
  let guard = 0
  while (host.pings.length === 0 && guard++ < 2000) t.clock.advance(1)
  // Jump to the deadline in one step: the tick and the late answer fall due together.
  t.clock.advance(300)
  t.clock.advance(0)
  t.clock.advance(1)
  t.equal(host.terminated.length, 0, 'not terminated')
  t.equal(scheduler.counters.reprieves, 1)
  scheduler.stop()
})

// With a timeout above the interval, an answered peer gets its next ping an interval after the
// last one, and a late answer (after that moment, before the deadline) gets it at once, not at
// the deadline.
for (const { answerAfter, gap, name } of [
  { answerAfter: 10, gap: 200, name: 'a timeout above the interval still pings answered peers every interval' },
  { answerAfter: 500, gap: 500, name: 'with a timeout above the interval, a late answer gets the next ping at once, not at the deadline' }
]) {
  void t.test(name, async (t) => {
    t.clock.enter()
    const [c] = connections(1)
    const host = recordingHost((conn) => setTimeout(() => scheduler.alive(asConnection(conn), true), answerAfter))
    const scheduler = new HeartbeatScheduler({ interval: 200, timeout: 1000 }, host.host)
    scheduler.add(asConnection(c))
    advance(t, 3000, 1)
    const [firstGap, ...gaps] = host.pings.slice(1).map((p, i) => p.at - host.pings[i].at)
    // The first ping is jittered into [100, 200] ms, and the next one goes out with its batch,
    // at or before it was due; every later one is one gap after the last.
    t.ok(firstGap > 0 && firstGap <= gap + scheduler.tickMs + 1, `first gap ${firstGap}`)
    t.ok(gaps.length >= Math.floor(3000 / gap) - 3, `${host.pings.length} pings`)
    // Less than a tick short after a second ping that waited for its answer past the batch's tick.
    t.ok(gaps[0] > gap - scheduler.tickMs && gaps[0] <= gap + scheduler.tickMs + 1, `gaps ${gaps.join(', ')}`)
    t.ok(gaps.slice(1).every((g) => g >= gap && g <= gap + scheduler.tickMs + 1), 'then one gap each')
    t.equal(host.terminated.length, 0)
    scheduler.stop()
  })
}

void t.test('with a timeout above the interval, silence is still detected at ping + timeout', async (t) => {
  t.clock.enter()
  const { host, pings, terminated } = recordingHost()
  const scheduler = new HeartbeatScheduler({ interval: 200, timeout: 1000 }, host)
  const [c] = connections(1)
  scheduler.add(asConnection(c))
  advance(t, 2000, 1)
  t.equal(pings.length, 1, 'no new ping while one is unanswered')
  t.equal(terminated.length, 1)
  t.ok(terminated[0].at - pings[0].at >= 1000)
})

/** Holds the thread for `ms` of real time, as a socket write does. */
function busy (ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end) { /* a ping write's cost */ }
}

for (const { round, where } of [{ round: 1, where: 'in the queue (first pings)' }, { round: 2, where: 'in a batch being sent' }]) {
  void t.test(`connections removed while their ping waits ${where} are never pinged; the rest still are`, async (t) => {
    // Real time: the ping budget is measured in it. Every ping costs 50 µs of the thread, so a
    // batch goes out over several turns and most of it waits meanwhile.
    const all = connections(400)
    const removed = new Set<string>()
    let waitingWhenRemoved = 0
    const pings = new Map<string, number>()
    const host = recordingHost((connection) => {
      busy(0.05)
      pings.set(connection.id, (pings.get(connection.id) ?? 0) + 1)
      setImmediate(() => scheduler.alive(asConnection(connection), true))
      if (removed.size > 0 || pings.get(connection.id) !== round) return
      // The first ping of the round: remove every other connection not pinged in it yet, those
      // waiting to be sent at the same tick included.
      for (const [i, c] of all.entries()) {
        if (i % 2 === 0 || (pings.get(c.id) ?? 0) >= round) continue
        if (c.heartbeat.dueTick === connection.heartbeat.dueTick && c.heartbeat.slot === (round === 1 ? -2 /* in the queue */ : -3 /* in a batch */)) waitingWhenRemoved++
        scheduler.remove(asConnection(c))
        removed.add(c.id)
      }
    })
    const scheduler = new HeartbeatScheduler({ interval: 1000, timeout: 500 }, host.host)
    t.teardown(() => scheduler.stop())
    for (const c of all) scheduler.add(asConnection(c))
    await new Promise((resolve) => setTimeout(resolve, 3200))
    t.ok(waitingWhenRemoved > 0, `${waitingWhenRemoved} of the removed connections were waiting ${where}`)
    t.ok(host.pings.every((p) => !removed.has(p.id) || pings.get(p.id)! < round), 'no removed connection was pinged after its removal')
    const kept = all.filter((c) => !removed.has(c.id))
    t.ok(kept.every((c) => pings.get(c.id)! >= 3), 'every other connection was pinged each interval')
    t.equal(scheduler.scheduled, kept.length)
    t.equal(host.terminated.length, 0)
  })
}

void t.test('after a stall, due deadlines are judged at once while the backlog of pings goes out over several turns', async (t) => {
  // Real time: the ping budget is measured in it. Every ping costs 20 µs of the thread.
  const silent = connections(10)
  const chatty = connections(1000).map((c, i) => ({ ...c, id: `chatty${i}` }))
  const isSilent = new Set(silent.map((c) => c.id))
  const host = recordingHost((connection) => {
    busy(0.02)
    if (!isSilent.has(connection.id)) setImmediate(() => scheduler.alive(asConnection(connection), true))
  })
  // With a 500 ms timeout and a 1 100 ms stall, the first turn after the stall once found 9
  // suspects of 10 (in CI, and 1 run in 14 here; the cause was not pinned down). Now no silent
  // deadline can come before the stall (the earliest, for a first ping at 500 ms, is at 1 400
  // ms; asserted), and each has passed ~500 ms before the stall ends.
  const scheduler = new HeartbeatScheduler({ interval: 1000, timeout: 900 }, host.host)
  t.teardown(() => scheduler.stop())
  for (const c of silent) scheduler.add(asConnection(c))
  // Every silent connection has had its first ping (jittered over [500, 1000] ms).
  await new Promise((resolve) => setTimeout(resolve, 1000 + 2 * scheduler.tickMs))
  t.equal(host.pings.length, 10)
  t.equal(host.terminated.length, 0, 'no silent deadline came before the stall')
  for (const c of chatty) scheduler.add(asConnection(c))
  // A stall during which the silent deadlines (by ~1 950 ms) and every chatty first ping (by
  // ~2 100 ms) fall due.
  busy(1400)
  const turns: Array<{ pings: number, suspects: number }> = []
  const tick = scheduler.tick.bind(scheduler)
  scheduler.tick = () => {
    const before = host.pings.length
    tick()
    const suspects = silent.filter((c) => (c.heartbeat as unknown as { phase: number }).phase === 3 /* judging */).length
    turns.push({ pings: host.pings.length - before, suspects })
  }
  const deadline = Date.now() + 10_000
  while ((host.pings.length < 1010 || host.terminated.length < 10) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5))
  t.equal(turns[0].suspects, 10, 'the first turn after the stall made every overdue connection a suspect')
  t.ok(turns[0].pings < 1000, `and sent only ${turns[0].pings} of the 1 000 due pings (${pingBudgetMs} ms budget)`)
  t.ok(turns.filter((turn) => turn.pings > 0).length > 1, `the backlog went out over ${turns.filter((turn) => turn.pings > 0).length} turns`)
  t.equal(host.pings.length, 1010, 'every chatty connection was pinged')
  t.same(host.terminated.map((x) => x.id).sort(), silent.map((c) => c.id).sort(), 'exactly the silent ones were terminated')
  t.equal(scheduler.counters.reprieves, 0)
})

void t.test('a verdict pending when the scheduler stops (shutdown) terminates nobody', async (t) => {
  t.clock.enter()
  const { host, terminated } = recordingHost()
  const scheduler = new HeartbeatScheduler({ interval: 200, timeout: 100 }, host)
  const [c] = connections(1)
  scheduler.add(asConnection(c))
  // Stop inside the tick that makes the suspect, before its verdict (two immediates later).
  const tick = scheduler.tick.bind(scheduler)
  let stoppedWithSuspect = false
  scheduler.tick = () => {
    tick()
    if ((c.heartbeat as unknown as { phase: number }).phase === 3 /* judging */) {
      stoppedWithSuspect = true
      scheduler.stop()
    }
  }
  advance(t, 1000, 5)
  t.ok(stoppedWithSuspect, 'the scheduler stopped with a verdict pending')
  t.same(terminated, [])
  t.equal(scheduler.counters.timeouts, 0)
})
