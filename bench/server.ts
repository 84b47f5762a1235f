// A benchmark server process: node --expose-gc --import tsx bench/server.ts <contender> [settings JSON]
// (settings: ContenderSettings of bench/contenders.ts). Commands arrive as JSON lines on stdin (from the controller, never over the sockets under
// test); each gets one JSON line on stdout.
import { createInterface } from 'node:readline'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { Session } from 'node:inspector/promises'
import { writeFile } from 'node:fs/promises'
import { startContender, type BenchServerName, type ContenderSettings } from './contenders.js'

const contender = await startContender(process.argv[2] as BenchServerName, JSON.parse(process.argv[3] ?? '{}') as ContenderSettings)
const reply = (value: Record<string, unknown>): void => { process.stdout.write(`${JSON.stringify(value)}\n`) }
reply({ port: contender.port })

function collectGarbage (): void {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) throw new Error('run with --expose-gc')
  gc()
  gc()
}

const symbols = ['AAPL', 'MSFT', 'GOOG', 'AMZN', 'NVDA', 'META', 'TSLA', 'BRK.B', 'JPM', 'V', 'XOM', 'UNH']

/**
 * A text message of `size` bytes carrying its id and the monotonic send time, then padding
 * ('x'), or with `json` a list of price updates as a market feed sends them (compressible the
 * way real JSON is: repeated keys, varying numbers; deflate takes it to about a sixth).
 */
function payload (id: number, size: number, json = false): string {
  const head = `${id} ${process.hrtime.bigint()} `
  if (!json) return head + 'x'.repeat(Math.max(0, size - head.length))
  const items: string[] = []
  let length = head.length + 2
  for (let i = 0; ; i++) {
    const n = id * 1_000 + i
    const item = JSON.stringify({ seq: n, symbol: symbols[n % symbols.length], bid: (100 + (n * 7_919 % 10_000) / 100).toFixed(2), ask: (100 + (n * 7_927 % 10_000) / 100).toFixed(2), volume: n * 104_729 % 1_000_000, ts: 1_764_000_000_000 + n * 37 })
    if (length + item.length + 1 > size) break
    items.push(item)
    length += item.length + 1
  }
  const body = `[${items.join(',')}]`
  return head + body + ' '.repeat(Math.max(0, size - head.length - Buffer.byteLength(body)))
}

interface Command { cmd: string, from?: number, count?: number, size?: number, json?: boolean, spacingMs?: number, perTurn?: number, path?: string, intervalUs?: number }

/** The main thread's V8 CPU profiler, driven in-process so a profile covers one scenario's window only. */
let profiler: Session | undefined

const lag = monitorEventLoopDelay({ resolution: 1 })

async function run (command: Command): Promise<Record<string, unknown>> {
  switch (command.cmd) {
    case 'connections':
      return { connections: contender.connections() }
    case 'lagStart':
      lag.reset()
      lag.enable()
      return {}
    case 'lagStop':
      lag.disable()
      return { maxLagMs: lag.max / 1e6 }
    case 'cpu': {
      // The process's CPU time so far (every thread: main, GC helpers, libuv's pool), µs:
      // deltas of it count work, not waiting.
      const { user, system } = process.cpuUsage()
      return { user, system, cpuUs: user + system }
    }
    case 'profileStart':
      profiler = new Session()
      profiler.connect()
      await profiler.post('Profiler.enable')
      await profiler.post('Profiler.setSamplingInterval', { interval: command.intervalUs ?? 100 })
      await profiler.post('Profiler.start')
      return {}
    case 'profileStop': {
      if (profiler === undefined) throw new Error('profileStart first')
      const { profile } = await profiler.post('Profiler.stop')
      profiler.disconnect()
      profiler = undefined
      await writeFile(command.path!, JSON.stringify(profile))
      return { path: command.path }
    }
    case 'memory': {
      collectGarbage()
      const usage = process.memoryUsage()
      return { rss: usage.rss, heapUsed: usage.heapUsed, connections: contender.connections() }
    }
    case 'sequential': {
      // One broadcast at a time, spaced so that each completes before the next one.
      const histogram = monitorEventLoopDelay({ resolution: 1 })
      histogram.enable()
      const sendLoops: number[] = []
      const from = command.from ?? 0
      for (let id = from; id < from + command.count!; id++) {
        const started = performance.now()
        await contender.broadcast(payload(id, command.size!, command.json))
        sendLoops.push(performance.now() - started)
        await new Promise((resolve) => setTimeout(resolve, command.spacingMs))
      }
      histogram.disable()
      sendLoops.sort((a, b) => a - b)
      return { sendLoopP50: sendLoops[Math.floor(sendLoops.length / 2)], sendLoopMax: sendLoops[sendLoops.length - 1], maxStallMs: histogram.max / 1e6 }
    }
    case 'burst': {
      // Broadcasts back to back, `perTurn` of them started per event-loop turn (several in flight).
      const started = performance.now()
      let pending: Array<void | Promise<unknown>> = []
      for (let id = 0; id < command.count!; id++) {
        pending.push(contender.broadcast(payload(id, command.size!, command.json)))
        if (pending.length === command.perTurn) {
          await Promise.all(pending)
          pending = []
          await nextTurn()
        }
      }
      await Promise.all(pending)
      return { sendMs: performance.now() - started }
    }
    default:
      throw new Error(`unknown command ${command.cmd}`)
  }
}

createInterface({ input: process.stdin }).on('line', (line) => {
  run(JSON.parse(line) as Command).then(reply, (err: unknown) => reply({ error: String(err) }))
})
process.stdin.on('end', () => { void contender.close().then(() => process.exit(0)) })
