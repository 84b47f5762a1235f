// One heartbeat contender in its own process:
//   node --expose-gc --import tsx bench/heartbeat-server.ts <stabilizer|ws-sweep|fastify-sweep|heartbeat-off> INTERVAL_MS
// Prints {"port"} once listening; on a "measure MS" line from the controller (stdin, never the
// sockets under test) it measures for MS and prints {"cpuMicros","userMicros","systemMicros",
// "pongs","maxStallMs","longestTickMs","connections"} (longestTickMs: the stabilizer's own figure);
// "measure MS cpu" leaves the stall monitor off (maxStallMs null);
// on "gc" it runs a full collection and prints {"gc":true}.
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import { createInterface } from 'node:readline'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { Session } from 'node:inspector/promises'
import { writeFileSync } from 'node:fs'
import { WebSocketServer, type WebSocket } from 'ws'
import stabilizer from '../lib/index.js'

const [contender = 'stabilizer', intervalArg = '1000'] = process.argv.slice(2)
const interval = Number(intervalArg)
let pongs = 0
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
    process.stdout.write(`${JSON.stringify({ cpuMicros: cpu.user + cpu.system, userMicros: cpu.user, systemMicros: cpu.system, pongs: pongCount() - startPongs, maxStallMs: histogram === undefined ? null : histogram.max / 1e6, longestTickMs, connections: connections() })}\n`)
    void profiler?.post('Profiler.stop').then(({ profile }) => {
      writeFileSync(`${profileDir!}/${contender}-${process.pid}.cpuprofile`, JSON.stringify(profile))
      profiler.disconnect()
    })
  }, Number(arg))
})
process.stdin.on('end', () => process.exit(0))
