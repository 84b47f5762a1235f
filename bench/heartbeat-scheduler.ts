// The heartbeat scheduler alone, in its own process, at N fake connections (no sockets: each
// ping is answered in a microtask), to show its own cost where one process cannot hold N
// sockets (`ulimit -Hn`):
//   node --expose-gc --import tsx bench/heartbeat-scheduler.ts [connections=50000] [intervalMs=1000]
// Prints one JSON line: CPU µs per ping/pong of scheduling and the tick durations (p50, p99,
// longest, and the pings of the longest), whole and with the GC pauses within them taken out
// (the answers' microtasks allocate), the longest so measured with the process's CPU time (all
// threads) over it (less than its length where the thread was descheduled: a 25 s window holds
// ~30 ticks, so one preempted tick is its p99), over a window of five intervals (one for
// intervals of 5 s and more), after two intervals of warm-up and a full GC.
import { PerformanceObserver } from 'node:perf_hooks'
import { HeartbeatScheduler, HeartbeatState } from '../lib/heartbeat.js'
import type { Connection } from '../lib/connection.js'
import { ticksWithoutGc } from './tick-spans.js'

const connections = Number(process.argv[2] ?? 50_000)
const interval = Number(process.argv[3] ?? 1000)
const windowMs = interval >= 5000 ? interval : 5 * interval

const scheduler: HeartbeatScheduler = new HeartbeatScheduler({ interval, timeout: interval / 2 }, {
  sendPing: (connection) => { queueMicrotask(() => scheduler.alive(connection, true)); return true },
  terminate: () => { throw new Error('no one should time out') }
})
for (let i = 0; i < connections; i++) scheduler.add({ id: String(i), state: 'open', heartbeat: new HeartbeatState() } as unknown as Connection)

/**
 * The ticks as bench/tick-spans.ts records them, with the process's CPU time in each (below a
 * tick's length where the thread was descheduled: the machine is shared), and the GC pauses.
 */
const spans: number[] = []
const gcPauses: number[] = []
const realTick = scheduler.tick.bind(scheduler)
scheduler.tick = () => {
  const pingsBefore = scheduler.counters.pingsSent
  const cpu = process.cpuUsage()
  const started = performance.now()
  realTick()
  const ended = performance.now()
  const { user, system } = process.cpuUsage(cpu)
  spans.push(started, ended, user + system, scheduler.counters.pingsSent - pingsBefore)
}
await new Promise((resolve) => setTimeout(resolve, 2 * interval))
;(globalThis as { gc?: () => void }).gc?.()
spans.length = 0
const gcObserver = new PerformanceObserver((entries) => { for (const entry of entries.getEntries()) gcPauses.push(entry.startTime, entry.startTime + entry.duration) })
gcObserver.observe({ entryTypes: ['gc'] })
const cpuBefore = process.cpuUsage()
const pongsBefore = scheduler.counters.pongsReceived
await new Promise((resolve) => setTimeout(resolve, windowMs))
const cpu = process.cpuUsage(cpuBefore)
const pongs = scheduler.counters.pongsReceived - pongsBefore
scheduler.stop()
for (const entry of gcObserver.takeRecords()) gcPauses.push(entry.startTime, entry.startTime + entry.duration)
gcObserver.disconnect()
const withoutGc = ticksWithoutGc(spans, gcPauses)
const ticks = Array.from({ length: spans.length / 4 }, (_, i) => ({ ms: spans[4 * i + 1] - spans[4 * i], pings: spans[4 * i + 3] }))
const sorted = ticks.map((tick) => tick.ms).sort((a, b) => a - b)
const longest = ticks.reduce((max, tick) => (tick.ms > max.ms ? tick : max), { ms: 0, pings: 0 })
process.stdout.write(`${JSON.stringify({
  connections,
  windowMs,
  pongs,
  cpuMicrosPerPong: (cpu.user + cpu.system) / Math.max(1, pongs),
  ticks: ticks.length,
  tickP50Ms: sorted[Math.floor(sorted.length / 2)] ?? 0,
  tickP99Ms: sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))] ?? 0,
  longestTickMs: longest.ms,
  pingsInLongestTick: longest.pings,
  tickWithoutGcP99Ms: withoutGc.p99Ms,
  longestTickWithoutGcMs: withoutGc.longestMs,
  longestTickWithoutGcCpuMs: withoutGc.longestCpuMs,
  pingsInLongestTickWithoutGc: withoutGc.longestPings
})}\n`)
