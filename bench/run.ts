/**
 * `npm run bench` — the stabilizer side by side with raw @fastify/websocket, raw ws and
 * socket.io, in one interleaved run (contenders alternate within every round), reported as
 * medians with ranges and as ratios against ws and socket.io from the same run.
 * `npm run bench -- --quick`: tiny sizes, one round — a smoke check, not a measurement.
 * Servers and clients are separate processes on 127.0.0.1; the controller talks to them over
 * stdin/stdout only. See bench/README.md.
 */
import os from 'node:os'
import { contenderNames, type ContenderName } from './contenders.js'
import { spawnJson, type JsonProcess } from '../test/fixtures/json-process.js'
import { mergeDeliveries, type DeliveryReport } from './deliveries.js'

const quick = process.argv.includes('--quick')
/** `--only=fanout,throughput` runs a subset of the scenarios (memory, fanout, throughput, storm, echo). */
const only = process.argv.find((arg) => arg.startsWith('--only='))?.slice('--only='.length).split(',')
const selected = (scenario: string): boolean => only === undefined || only.includes(scenario)
const rounds = quick ? 1 : 3
const clientsPerProcess = 5_000
const sizes = quick
  ? { memory: [200], fanout: [100], throughput: [100], storm: 200, echoLoad: 50 }
  : { memory: [5_000, 10_000], fanout: [1_000, 5_000], throughput: [1_000, 5_000], storm: 5_000, echoLoad: 1_000 }

/** A listen backlog above a storm's size for every contender, so the storm measures handshakes, not SYN retries. */
const listenSettings = JSON.stringify({ backlog: 4096 })

interface Stack { server: JsonProcess, clients: JsonProcess[], connectMs: number, failures: number }

async function startStack (contender: ContenderName, connections: number): Promise<Stack> {
  const server = spawnJson(process.execPath, ['--expose-gc', '--import', 'tsx', 'bench/server.ts', contender, listenSettings])
  const { port } = await server.next() as { port: number }
  const path = contender === 'socket.io' ? '' : '/ws'
  const url = `${contender === 'socket.io' ? 'http' : 'ws'}://127.0.0.1:${port}${path}`
  const clients: JsonProcess[] = []
  await server.ask({ cmd: 'lagStart' })
  const opens: Array<Promise<Record<string, unknown>>> = []
  for (let left = connections; left > 0; left -= clientsPerProcess) {
    const client = spawnJson(process.execPath, ['bench/clients.mjs', contender, url, String(Math.min(clientsPerProcess, left))])
    clients.push(client)
    opens.push(client.next())
  }
  const opened = await Promise.all(opens)
  return {
    server,
    clients,
    connectMs: Math.max(...opened.map((o) => o.ms as number)),
    failures: opened.reduce((sum, o) => sum + (o.failures as number), 0)
  }
}

async function stopStack (stack: Stack): Promise<void> {
  await Promise.all(stack.clients.map(async (client) => await client.stop()))
  await stack.server.stop()
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }
const median = (values: number[]): number => { const sorted = [...values].sort((a, b) => a - b); return sorted[Math.floor(sorted.length / 2)] }
const percentile = (values: number[], q: number): number => { const sorted = [...values].sort((a, b) => a - b); return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] }

/** One measure of each contender per round, order alternating between rounds. */
async function interleaved (measure: (contender: ContenderName) => Promise<Record<string, number>>): Promise<Map<ContenderName, Array<Record<string, number>>>> {
  const results = new Map<ContenderName, Array<Record<string, number>>>(contenderNames.map((name) => [name, []]))
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? [...contenderNames] : [...contenderNames].reverse()
    for (const contender of order) results.get(contender)!.push(await measure(contender))
  }
  return results
}

interface Metric { key: string, label: string, better: 'lower' | 'higher', digits?: number, /** Show ratios against ws and socket.io. */ ratio?: boolean }

/** Ratios are against `references` (medians of the same run): ws and socket.io unless a scenario's target names another. */
function table (title: string, results: Map<ContenderName, Array<Record<string, number>>>, metrics: Metric[], references: ContenderName[] = ['ws', 'socket.io']): void {
  const compared = metrics.filter((m) => m.ratio === true)
  console.log(`\n### ${title}\n`)
  console.log(`| contender | ${metrics.map((m) => `${m.label} (${m.better} is better)`).join(' | ')} | ${compared.map((m) => references.map((r, i) => (i === 0 ? `${m.label}: vs ${r}` : `vs ${r}`)).join(' | ')).join(' | ')} |`)
  console.log(`| --- | ${metrics.map(() => '---').join(' | ')} | ${compared.map(() => references.map(() => '---').join(' | ')).join(' | ')} |`)
  const mid = (name: ContenderName, key: string): number => median(results.get(name)!.map((r) => r[key]))
  const ratio = (value: number, base: number): string => (base === 0 ? '—' : `${(value / base).toFixed(2)}×`)
  for (const name of contenderNames) {
    const runs = results.get(name)!
    const cells = metrics.map((m) => {
      const values = runs.map((r) => r[m.key])
      const digits = m.digits ?? 1
      const range = values.length > 1 ? ` (${Math.min(...values).toFixed(digits)}–${Math.max(...values).toFixed(digits)})` : ''
      return `${mid(name, m.key).toFixed(digits)}${range}`
    })
    const ratios = compared.map((m) => references.map((r) => ratio(mid(name, m.key), mid(r, m.key))).join(' | '))
    console.log(`| ${name} | ${cells.join(' | ')} | ${ratios.join(' | ')} |`)
  }
}

async function memory (connections: number): Promise<void> {
  const results = await interleaved(async (contender) => {
    const server = spawnJson(process.execPath, ['--expose-gc', '--import', 'tsx', 'bench/server.ts', contender, listenSettings])
    await server.next() // listening
    const before = await server.ask({ cmd: 'memory' }) as { rss: number, heapUsed: number }
    await server.stop()
    const stack = await startStack(contender, connections)
    await sleep(500)
    const after = await stack.server.ask({ cmd: 'memory' }) as { rss: number, heapUsed: number, connections: number }
    await stopStack(stack)
    // A handshake may fail now and then when thousands connect at once: the figures are per
    // connection actually held, and a run that lost more than 1 % of them is not a measurement.
    if (after.connections < connections * 0.99) throw new Error(`${contender}: ${after.connections} of ${connections} connected`)
    if (after.connections !== connections) console.error(`${contender}: ${after.connections} of ${connections} connected; memory is per connection held`)
    return { rssPerConnection: (after.rss - before.rss) / after.connections, heapPerConnection: (after.heapUsed - before.heapUsed) / after.connections }
  })
  table(`Memory per idle connection, ${connections} connections (bytes, after GC; baseline: the same server with no client)`, results, [
    { key: 'rssPerConnection', label: 'RSS B/conn', better: 'lower', digits: 0, ratio: true },
    { key: 'heapPerConnection', label: 'heap B/conn', better: 'lower', digits: 0, ratio: true }
  ], ['fastify-websocket', 'ws', 'socket.io'])
}

async function collectDeliveries (clients: JsonProcess[]): Promise<Map<number, { latency: number, deliveries: number }>> {
  const reports: DeliveryReport[] = []
  for (const client of clients) reports.push(await client.ask({ cmd: 'report' }) as DeliveryReport)
  return mergeDeliveries(reports)
}

async function fanout (connections: number): Promise<void> {
  const broadcasts = quick ? 20 : 200
  const results = await interleaved(async (contender) => {
    const stack = await startStack(contender, connections)
    await sleep(300)
    const server = await stack.server.ask({ cmd: 'sequential', count: broadcasts + 5, size: 100, spacingMs: connections >= 5_000 ? 40 : 12 }) as { sendLoopP50: number, maxStallMs: number }
    await sleep(300)
    const byId = await collectDeliveries(stack.clients)
    await stopStack(stack)
    const measured = [...byId].filter(([id]) => id >= 5).map(([, entry]) => entry) // the first 5 warm up
    const missing = broadcasts * connections - measured.reduce((sum, entry) => sum + entry.deliveries, 0)
    const completions = measured.map((entry) => entry.latency)
    return { p50: percentile(completions, 0.5), p99: percentile(completions, 0.99), sendLoop: server.sendLoopP50, stall: server.maxStallMs, missing }
  })
  table(`Fan-out latency: one 100-byte broadcast to ${connections} clients, completion (ms until the last client has it) over ${broadcasts} broadcasts`, results, [
    { key: 'p50', label: 'completion p50 ms', better: 'lower', digits: 2, ratio: true },
    { key: 'p99', label: 'completion p99 ms', better: 'lower', digits: 2, ratio: true },
    { key: 'sendLoop', label: 'server send loop p50 ms', better: 'lower', digits: 2 },
    { key: 'stall', label: 'longest loop stall ms', better: 'lower', digits: 1 },
    { key: 'missing', label: 'deliveries missing', better: 'lower', digits: 0 }
  ])
}

async function throughput (connections: number): Promise<void> {
  const broadcasts = quick ? 20 : Math.round(1_000_000 / connections)
  const results = await interleaved(async (contender) => {
    const stack = await startStack(contender, connections)
    await sleep(300)
    await Promise.all(stack.clients.map(async (client) => await client.ask({ cmd: 'report' })))
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
    await stopStack(stack)
    const seconds = Number(lastAt - started) / 1e9
    return { perSecond: delivered / seconds, delivered: delivered / expected * 100 }
  })
  table(`Sustained fan-out: ${broadcasts} broadcasts of 100 bytes to ${connections} clients, 4 started per loop turn`, results, [
    { key: 'perSecond', label: 'deliveries/s', better: 'higher', digits: 0, ratio: true },
    { key: 'delivered', label: '% delivered', better: 'higher', digits: 1 }
  ])
}

async function storm (connections: number): Promise<void> {
  const results = await interleaved(async (contender) => {
    const stack = await startStack(contender, connections)
    const { maxLagMs } = await stack.server.ask({ cmd: 'lagStop' }) as { maxLagMs: number }
    await stopStack(stack)
    return { ms: stack.connectMs, rate: connections / (stack.connectMs / 1000), failures: stack.failures, lag: maxLagMs }
  })
  table(`Connection storm: ${connections} clients connecting at once to a fresh server`, results, [
    { key: 'ms', label: 'time to all connected ms', better: 'lower', digits: 0 },
    { key: 'rate', label: 'connections/s', better: 'higher', digits: 0, ratio: true },
    { key: 'failures', label: 'handshake failures', better: 'lower', digits: 0 },
    { key: 'lag', label: 'longest loop lag ms', better: 'lower', digits: 1, ratio: true }
  ], ['fastify-websocket', 'ws', 'socket.io'])
}

async function echo (load: number): Promise<void> {
  const results = await interleaved(async (contender) => {
    const stack = await startStack(contender, load)
    await sleep(300)
    const { p50, p99 } = await stack.clients[0].ask({ cmd: 'echo', sockets: 10, count: quick ? 10 : 200 }) as { p50: number, p99: number }
    await stopStack(stack)
    return { p50, p99 }
  })
  table(`Echo round trip with ${load} connected clients (10 sockets × ${quick ? 10 : 200} sequential echoes)`, results, [
    { key: 'p50', label: 'RTT p50 ms', better: 'lower', digits: 3, ratio: true },
    { key: 'p99', label: 'RTT p99 ms', better: 'lower', digits: 3, ratio: true }
  ])
}

const started = Date.now()
console.log(`## fastify-websocket-stabilizer benchmark${quick ? ' (quick smoke run: tiny sizes, not a measurement)' : ''}\n`)
console.log(`Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}; open-file limit per process: clients ≤ ${clientsPerProcess} per process. ${rounds} interleaved round(s); cells are medians (min–max).`)
if (selected('memory')) for (const n of sizes.memory) await memory(n)
if (selected('fanout')) for (const n of sizes.fanout) await fanout(n)
if (selected('throughput')) for (const n of sizes.throughput) await throughput(n)
if (selected('storm')) await storm(sizes.storm)
if (selected('echo')) await echo(sizes.echoLoad)
console.log(`\nTotal time: ${Math.round((Date.now() - started) / 1000)} s. Heartbeat cost: \`npx tsx bench/heartbeat.ts\`.`)
