/**
 * What `metrics: true` costs: the stabilizer with metrics off and on (scraped once a second),
 * side by side in one interleaved run (the two alternate within every round), reported as
 * medians with ranges and as the on/off ratio from the same run (target ≥ 0.97× for
 * throughputs; the server's CPU time per delivery or echo is the figure the machine's load
 * moves least). Servers and clients are separate processes on 127.0.0.1, spoken to over
 * stdin/stdout only. Run: `npx tsx bench/metrics.ts [rounds=5] [connections=1000]`;
 * `--quick` for a smoke run with tiny sizes (not a measurement); `--only=fanout,echo,rtt` for
 * a subset; `--profile=<dir>` writes a V8 CPU profile of each echo-flood window to <dir> and
 * prints how much of the server's busy time was spent under the metrics code.
 */
import { mkdir, readFile } from 'node:fs/promises'
import os from 'node:os'
import { join, resolve } from 'node:path'
import type { BenchServerName } from './contenders.js'
import { originOf, type CpuProfile } from './cpu-profile.js'
import { spawnJson, type JsonProcess } from '../test/fixtures/json-process.js'

const quick = process.argv.includes('--quick')
const [roundsArg, connectionsArg] = process.argv.slice(2).filter((arg) => !arg.startsWith('--'))
const rounds = quick ? 1 : Number(roundsArg ?? 5)
const connections = quick ? 100 : Number(connectionsArg ?? 1000)
const variants: readonly BenchServerName[] = ['stabilizer', 'stabilizer-metrics']
const label: Record<string, string> = { stabilizer: 'metrics off', 'stabilizer-metrics': 'metrics on' }
const only = process.argv.find((arg) => arg.startsWith('--only='))?.slice('--only='.length).split(',')
const profileArg = process.argv.find((arg) => arg.startsWith('--profile='))?.slice('--profile='.length)
const profileDir = profileArg === undefined ? undefined : resolve(profileArg)
let profiles = 0

interface Stack { server: JsonProcess, clients: JsonProcess[], listeningAt: number }

async function startStack (variant: BenchServerName, count: number): Promise<Stack> {
  const server = spawnJson(process.execPath, ['--expose-gc', '--import', 'tsx', 'bench/server.ts', variant])
  const { port } = await server.next() as { port: number }
  const listeningAt = Date.now()
  const clients: JsonProcess[] = []
  const opens: Array<Promise<Record<string, unknown>>> = []
  for (let left = count; left > 0; left -= 5_000) {
    const client = spawnJson(process.execPath, ['bench/clients.mjs', 'stabilizer', `ws://127.0.0.1:${port}/ws`, String(Math.min(5_000, left))])
    clients.push(client)
    opens.push(client.next())
  }
  const opened = await Promise.all(opens)
  const failures = opened.reduce((sum, o) => sum + (o.failures as number), 0)
  if (failures > 0) throw new Error(`${variant}: ${failures} handshakes failed`)
  return { server, clients, listeningAt }
}

async function stopStack (stack: Stack): Promise<void> {
  await Promise.all(stack.clients.map(async (client) => await client.stop()))
  await stack.server.stop()
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }
/**
 * Waits until the server's first scrape (a second after it listens) is over, for both variants:
 * the first one loads and compiles the scrape path, a cost a process pays once, not per second.
 */
const settle = async (stack: Stack): Promise<void> => { await sleep(Math.max(300, stack.listeningAt + 1500 - Date.now())) }
const median = (values: number[]): number => { const sorted = [...values].sort((a, b) => a - b); return sorted[Math.floor(sorted.length / 2)] }

/** One measure of each variant per round, the order alternating between rounds. */
async function interleaved (measure: (variant: BenchServerName) => Promise<Record<string, number>>): Promise<Map<BenchServerName, Array<Record<string, number>>>> {
  const results = new Map<BenchServerName, Array<Record<string, number>>>(variants.map((name) => [name, []]))
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? variants : [...variants].reverse()
    for (const variant of order) results.get(variant)!.push(await measure(variant))
  }
  return results
}

function table (title: string, results: Map<BenchServerName, Array<Record<string, number>>>, metrics: Array<{ key: string, label: string, better: 'lower' | 'higher', digits: number }>): void {
  console.log(`\n### ${title}\n`)
  console.log(`| | ${metrics.map((m) => `${m.label} (${m.better} is better)`).join(' | ')} |`)
  console.log(`| --- | ${metrics.map(() => '---').join(' | ')} |`)
  for (const variant of variants) {
    const cells = metrics.map((m) => {
      const values = results.get(variant)!.map((r) => r[m.key])
      const range = values.length > 1 ? ` (${Math.min(...values).toFixed(m.digits)}–${Math.max(...values).toFixed(m.digits)})` : ''
      return `${median(values).toFixed(m.digits)}${range}`
    })
    console.log(`| ${label[variant]} | ${cells.join(' | ')} |`)
  }
  const ratios = metrics.map((m) => {
    const on = median(results.get('stabilizer-metrics')!.map((r) => r[m.key]))
    const off = median(results.get('stabilizer')!.map((r) => r[m.key]))
    return off === 0 ? '—' : `${(on / off).toFixed(3)}×`
  })
  console.log(`| on / off | ${ratios.join(' | ')} |`)
}

async function fanOut (): Promise<void> {
  const broadcasts = quick ? 20 : Math.round(1_000_000 / connections)
  const results = await interleaved(async (variant) => {
    const stack = await startStack(variant, connections)
    await settle(stack)
    await Promise.all(stack.clients.map(async (client) => await client.ask({ cmd: 'report' })))
    const cpuBefore = await stack.server.ask({ cmd: 'cpu' }) as { cpuUs: number }
    const started = process.hrtime.bigint()
    await stack.server.ask({ cmd: 'burst', count: broadcasts, size: 100, perTurn: 4 })
    const expected = broadcasts * connections
    let delivered = 0
    let lastAt = 0n
    for (let stable = 0, previous = -1; delivered < expected && stable < 20; await sleep(100)) {
      const counts = await Promise.all(stack.clients.map(async (client) => await client.ask({ cmd: 'count' }) as { total: number, lastAt: string }))
      delivered = counts.reduce((sum, c) => sum + c.total, 0)
      lastAt = counts.reduce((max, c) => (BigInt(c.lastAt) > max ? BigInt(c.lastAt) : max), 0n)
      stable = delivered === previous ? stable + 1 : 0
      previous = delivered
    }
    const cpuAfter = await stack.server.ask({ cmd: 'cpu' }) as { cpuUs: number }
    await stopStack(stack)
    return {
      perSecond: delivered / (Number(lastAt - started) / 1e9),
      cpuNsPerDelivery: (cpuAfter.cpuUs - cpuBefore.cpuUs) * 1000 / delivered,
      delivered: delivered / expected * 100
    }
  })
  table(`Sustained fan-out: ${broadcasts} broadcasts of 100 bytes to ${connections} clients, 4 started per loop turn`, results, [
    { key: 'perSecond', label: 'deliveries/s', better: 'higher', digits: 0 },
    { key: 'cpuNsPerDelivery', label: 'server CPU ns/delivery', better: 'lower', digits: 0 },
    { key: 'delivered', label: '% delivered', better: 'higher', digits: 1 }
  ])
}

async function echoFlood (): Promise<void> {
  const sockets = Math.min(100, connections)
  const perSocket = quick ? 50 : 2_000
  const results = await interleaved(async (variant) => {
    const stack = await startStack(variant, connections)
    await settle(stack)
    await stack.clients[0].ask({ cmd: 'flood', sockets, count: 50, window: 10 }) // warm-up
    const path = profileDir === undefined ? undefined : join(profileDir, `echo-${variant}-${++profiles}.cpuprofile`)
    if (path !== undefined) await stack.server.ask({ cmd: 'profileStart' })
    const cpuBefore = await stack.server.ask({ cmd: 'cpu' }) as { cpuUs: number }
    const { ms, echoes } = await stack.clients[0].ask({ cmd: 'flood', sockets, count: perSocket, window: 10 }) as { ms: number, echoes: number }
    const cpuAfter = await stack.server.ask({ cmd: 'cpu' }) as { cpuUs: number }
    if (path !== undefined) await stack.server.ask({ cmd: 'profileStop', path })
    await stopStack(stack)
    const result = { perSecond: echoes / (ms / 1000), cpuNsPerEcho: (cpuAfter.cpuUs - cpuBefore.cpuUs) * 1000 / echoes }
    if (path === undefined) return result
    const { busyMs, metricsMs } = metricsShare(JSON.parse(await readFile(path, 'utf8')) as CpuProfile)
    return { ...result, busyNsPerEcho: busyMs * 1e6 / echoes, metricsNsPerEcho: metricsMs * 1e6 / echoes, metricsPercent: metricsMs / busyMs * 100 }
  })
  table(`Echo throughput: ${sockets} sockets × ${perSocket} echoes of ~10 bytes, 10 in flight per socket, ${connections} connected`, results, [
    { key: 'perSecond', label: 'echoes/s', better: 'higher', digits: 0 },
    { key: 'cpuNsPerEcho', label: 'server CPU ns/echo', better: 'lower', digits: 0 }
  ])
  if (profileDir === undefined) return
  table(`Echo throughput, the server's main thread as profiled (profiles in ${profileDir})`, results, [
    { key: 'busyNsPerEcho', label: 'busy ns/echo', better: 'lower', digits: 0 },
    { key: 'metricsNsPerEcho', label: 'ns/echo under metrics code', better: 'lower', digits: 1 },
    { key: 'metricsPercent', label: '% of busy time under metrics code', better: 'lower', digits: 2 }
  ])
}

/**
 * The busy time of a profile and the part of it spent under the metrics code: a sample counts
 * when any frame of its stack is in lib/metrics*.ts or prom-client (the scrape and the recorder).
 */
function metricsShare (profile: CpuProfile): { busyMs: number, metricsMs: number } {
  const parent = new Map<number, number>()
  const byId = new Map(profile.nodes.map((node) => [node.id, node]))
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id)
  const underMetrics = new Map<number, boolean>()
  const isMetrics = (id: number): boolean => {
    const known = underMetrics.get(id)
    if (known !== undefined) return known
    const { url, functionName } = byId.get(id)!.callFrame
    const up = parent.get(id)
    const result = /\/lib\/metrics(-route)?\.ts/.test(url) || originOf(url, functionName) === 'prom-client' || (up !== undefined && isMetrics(up))
    underMetrics.set(id, result)
    return result
  }
  let busyMs = 0
  let metricsMs = 0
  for (let i = 0; i < profile.samples.length; i++) {
    const ms = (i + 1 < profile.timeDeltas.length ? profile.timeDeltas[i + 1] : 0) / 1000
    if (byId.get(profile.samples[i])!.callFrame.functionName === '(idle)') continue
    busyMs += ms
    if (isMetrics(profile.samples[i])) metricsMs += ms
  }
  return { busyMs, metricsMs }
}

async function echoRoundTrip (): Promise<void> {
  const results = await interleaved(async (variant) => {
    const stack = await startStack(variant, connections)
    await settle(stack)
    const { p50, p99 } = await stack.clients[0].ask({ cmd: 'echo', sockets: 10, count: quick ? 10 : 200 }) as { p50: number, p99: number }
    await stopStack(stack)
    return { p50, p99 }
  })
  table(`Echo round trip with ${connections} connected (10 sockets × ${quick ? 10 : 200} sequential echoes)`, results, [
    { key: 'p50', label: 'RTT p50 ms', better: 'lower', digits: 3 },
    { key: 'p99', label: 'RTT p99 ms', better: 'lower', digits: 3 }
  ])
}

if (profileDir !== undefined) await mkdir(profileDir, { recursive: true })
const started = Date.now()
console.log(`## Metrics on vs off${quick ? ' (quick smoke run: tiny sizes, not a measurement)' : ''}\n`)
console.log(`Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}. ${rounds} interleaved round(s); cells are medians (min–max); "metrics on" is scraped once a second.`)
if (only === undefined || only.includes('fanout')) await fanOut()
if (only === undefined || only.includes('echo')) await echoFlood()
if (only === undefined || only.includes('rtt')) await echoRoundTrip()
console.log(`\nTotal time: ${Math.round((Date.now() - started) / 1000)} s.`)
