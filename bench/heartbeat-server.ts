// One heartbeat contender in its own process:
//   node --no-memory-reducer --expose-gc --import tsx bench/heartbeat-server.ts <stabilizer|ws-sweep|fastify-sweep|heartbeat-off> INTERVAL_MS
// (bench/heartbeat.ts starts it so: without the memory reducer's idle-time GCs in the windows)
// Prints {"port"} once listening; on a "measure MS" line from the controller (stdin, never the
// sockets under test) it measures for MS and prints {"cpuMicros","userMicros","systemMicros",
// "pongs","maxStallMs","longestTickMs","tickWithoutGcMs","tickWithoutGcCpuMs","tickWithoutGcPings",
// "tickP99WithoutGcMs","batchMs","batchPings","connections"}:
// - longestTickMs: the stabilizer's own figure;
// - tickWithoutGcMs: the longest tick less the GC pauses within it, tickWithoutGcCpuMs the
//   process's CPU time over that whole tick (GC pauses and helper threads included),
//   tickWithoutGcPings the pings it sent, tickP99WithoutGcMs the 99th percentile of ticks;
// - batchMs: the longest ping batch, from its first turn to its last, batchPings its pings;
// "measure MS cpu" leaves the stall monitor off (maxStallMs null);
// on "gc" it runs a full collection and prints {"gc":true};
// on "stats" it prints the counts so far: {"pongs","cpuMicros","turns","pingsSent"} (the last two
// the stabilizer's: its scheduler's turns, timer ticks and continuations alike, and its pings).
// HEARTBEAT_PING_BUDGET_MS=<ms> sets the scheduler's ping budget per turn (bench/heartbeat-instructions.ts).
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import { createInterface } from 'node:readline'
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'
import { Session } from 'node:inspector/promises'
import { writeFileSync } from 'node:fs'
import { WebSocketServer, type WebSocket } from 'ws'
import stabilizer from '../lib/index.js'
import { longestBatch, ticksWithoutGc } from './tick-spans.js'

const [contender = 'stabilizer', intervalArg = '1000'] = process.argv.slice(2)
const interval = Number(intervalArg)
let pongs = 0
/**
 * While the stall is measured: each heartbeat tick's start and end (ms), the process's CPU
 * time in it (µs) and the pings it sent, in fours (the stabilizer only).
 */
let tickSpans: number[] | undefined
/** Whether this contender has a heartbeat scheduler whose ticks (and GC pauses) are recorded. */
let recordsTicks = false
/** The stabilizer's scheduler turns and pings so far, for "stats". */
let schedulerCounts = (): { turns?: number, pingsSent?: number } => ({})

/**
 * The process's CPU time so far, in µs (V8's helper threads included). Node 20 has no per-thread
 * figure, and Linux's /proc/thread-self/schedstat is no substitute: for a running thread it is
 * brought up to date only at the scheduler's ticks (it read 4 ms of CPU for 1.4 ms ticks).
 */
const cpuMicros = (): number => {
  const { user, system } = process.cpuUsage()
  return user + system
}
let connections: () => number
let port: number

if (contender === 'stabilizer' || contender === 'heartbeat-off') {
  // heartbeat-off: the same server with heartbeats disabled, the baseline of the loop's stalls.
  const app = Fastify()
  const heartbeat = contender === 'stabilizer' ? { heartbeatInterval: interval, heartbeatTimeout: Math.floor(interval / 2) } : { heartbeatInterval: 0 }
  await app.register(stabilizer, { maxConnections: 100_000, ...heartbeat, statsRoute: false })
  app.get('/ws', { websocket: true }, () => {})
  await app.listen({ port: 0, host: '127.0.0.1' })
  port = (app.server.address() as { port: number }).port
  connections = () => app.stabilizer.getConnectionCount()
  // The scheduler's counters, read directly: getStats() also computes memory usage and RTT
  // percentiles over every connection, which would land in the measured window.
  const counters = (): { pongsReceived: number, longestTickMs: number } => (app.stabilizer as unknown as { heartbeat?: { counters: { pongsReceived: number, longestTickMs: number } } }).heartbeat?.counters ?? { pongsReceived: 0, longestTickMs: 0 }
  Object.defineProperty(globalThis, 'pongCount', { get: () => counters().pongsReceived })
  Object.defineProperty(globalThis, 'longestTick', { get: () => counters().longestTickMs })
  // The longest tick within the measuring window, not since start (which includes the burst of
  // connections at the start of a run): the bench resets the scheduler's own figure.
  Object.defineProperty(globalThis, 'resetLongestTick', { value: () => { counters().longestTickMs = 0 } })
  // Each tick's span and the CPU time in it, so that the GC pauses within a tick, and the time
  // the thread was not running at all (the machine is shared), can be told apart from its own
  // work.
  const scheduler = (app.stabilizer as unknown as { heartbeat?: { tick: () => void, counters: { pingsSent: number }, pingBudgetMs: number } }).heartbeat
  if (scheduler !== undefined) {
    recordsTicks = true
    if (process.env.HEARTBEAT_PING_BUDGET_MS !== undefined) scheduler.pingBudgetMs = Number(process.env.HEARTBEAT_PING_BUDGET_MS)
    let turns = 0
    schedulerCounts = () => ({ turns, pingsSent: scheduler.counters.pingsSent })
    const tick = scheduler.tick.bind(scheduler)
    scheduler.tick = () => {
      turns++
      if (tickSpans === undefined) return tick()
      const cpu = cpuMicros()
      const pings = scheduler.counters.pingsSent
      const started = performance.now()
      tick()
      const ended = performance.now()
      tickSpans.push(started, ended, cpuMicros() - cpu, scheduler.counters.pingsSent - pings)
    }
  }
} else {
  // The heartbeat of ws's README: one sweep over every client per interval, on a raw ws server
  // (ws-sweep) or on the stack the stabilizer runs on, raw @fastify/websocket (fastify-sweep):
  // the difference between the two is the server stack's, not the heartbeat's.
  type Live = WebSocket & { isAlive?: boolean }
  let wss: WebSocketServer
  if (contender === 'fastify-sweep') {
    const app = Fastify()
    await app.register(websocket)
    app.get('/ws', { websocket: true }, () => {})
    await app.listen({ port: 0, host: '127.0.0.1' })
    port = (app.server.address() as { port: number }).port
    wss = app.websocketServer
  } else {
    wss = new WebSocketServer({ port: 0, host: '127.0.0.1' })
    await new Promise((resolve) => wss.once('listening', resolve))
    port = (wss.address() as { port: number }).port
  }
  wss.on('connection', (ws: Live) => {
    ws.isAlive = true
    ws.on('pong', () => { ws.isAlive = true; pongs++ })
    ws.on('error', () => {})
  })
  setInterval(() => {
    for (const ws of wss.clients as Set<Live>) {
      if (ws.isAlive === false) { ws.terminate(); continue }
      ws.isAlive = false
      ws.ping()
    }
  }, interval).unref()
  connections = () => wss.clients.size
  Object.defineProperty(globalThis, 'pongCount', { get: () => pongs })
}

process.stdout.write(`${JSON.stringify({ port })}\n`)
const pongCount = (): number => (globalThis as unknown as { pongCount: number }).pongCount

createInterface({ input: process.stdin }).on('line', (line) => {
  const [command, arg, mode] = line.split(' ')
  if (command === 'stats') process.stdout.write(`${JSON.stringify({ pongs: pongCount(), cpuMicros: cpuMicros(), ...schedulerCounts() })}\n`)
  if (command === 'count') process.stdout.write(`${JSON.stringify({ connections: connections() })}\n`)
  // A full collection before a window: the major GC that follows the burst of connections at
  // the start of a run would otherwise land in the window and count as a heartbeat stall.
  if (command === 'gc') {
    ;(globalThis as { gc?: () => void }).gc?.()
    process.stdout.write(`${JSON.stringify({ gc: true })}\n`)
  }
  if (command !== 'measure') return
  // "measure MS cpu": no stall monitor, whose 1 ms timer would wake the loop 1 000 times a second
  // and so read the pongs in its own wake-ups: at the default interval that hid most of the
  // heartbeat's cost (bench/README.md). The stall is measured in a window of its own.
  const histogram = mode === 'cpu' ? undefined : monitorEventLoopDelay({ resolution: 1 })
  histogram?.enable()
  const gcPauses: number[] = []
  // Only where there are ticks to set them against: the other contenders' windows stay as they were.
  const gcObserver = histogram === undefined || !recordsTicks ? undefined : new PerformanceObserver((entries) => { for (const entry of entries.getEntries()) gcPauses.push(entry.startTime, entry.startTime + entry.duration) })
  gcObserver?.observe({ entryTypes: ['gc'] })
  if (gcObserver !== undefined) tickSpans = []
  // HEARTBEAT_CPU_PROFILE=<dir>: a V8 CPU profile of the window, <dir>/<contender>-<pid>.cpuprofile.
  const profileDir = process.env.HEARTBEAT_CPU_PROFILE
  const profiler = profileDir === undefined ? undefined : new Session()
  if (profiler !== undefined) {
    profiler.connect()
    // Sampled every 100 µs: a window of an idle server holds few busy milliseconds.
    void profiler.post('Profiler.enable')
      .then(async () => await profiler.post('Profiler.setSamplingInterval', { interval: 100 }))
      .then(async () => await profiler.post('Profiler.start'))
  }
  const startCpu = process.cpuUsage()
  const startPongs = pongCount()
  ;(globalThis as unknown as { resetLongestTick?: () => void }).resetLongestTick?.()
  setTimeout(() => {
    const cpu = process.cpuUsage(startCpu)
    histogram?.disable()
    const longestTickMs = (globalThis as unknown as { longestTick?: number }).longestTick ?? null
    for (const entry of gcObserver?.takeRecords() ?? []) gcPauses.push(entry.startTime, entry.startTime + entry.duration)
    gcObserver?.disconnect()
    const spans = tickSpans
    tickSpans = undefined
    const withoutGc = spans === undefined || longestTickMs === null ? undefined : ticksWithoutGc(spans, gcPauses)
    const batch = spans === undefined ? undefined : longestBatch(spans, Math.max(20, interval / 20))
    process.stdout.write(`${JSON.stringify({ cpuMicros: cpu.user + cpu.system, userMicros: cpu.user, systemMicros: cpu.system, pongs: pongCount() - startPongs, maxStallMs: histogram === undefined ? null : histogram.max / 1e6, longestTickMs, tickWithoutGcMs: withoutGc?.longestMs ?? null, tickWithoutGcCpuMs: withoutGc?.longestCpuMs ?? null, tickWithoutGcPings: withoutGc?.longestPings ?? null, tickP99WithoutGcMs: withoutGc?.p99Ms ?? null, batchMs: batch?.ms ?? null, batchPings: batch?.pings ?? null, connections: connections() })}\n`)
    void profiler?.post('Profiler.stop').then(({ profile }) => {
      writeFileSync(`${profileDir!}/${contender}-${process.pid}.cpuprofile`, JSON.stringify(profile))
      profiler.disconnect()
    })
  }, Number(arg))
})
process.stdin.on('end', () => process.exit(0))
