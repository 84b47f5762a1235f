/**
 * Compressed broadcasts side by side, in one interleaved run: a 4 KiB compressible JSON
 * message broadcast to N clients that all negotiated permessage-deflate, by
 * - stabilizer-shared: the stabilizer with `compression: { strategy: 'shared' }` (one deflate per broadcast);
 * - stabilizer-per-socket: the stabilizer with `compression: true` (ws deflates per socket);
 * - ws-deflate: a raw ws server with `perMessageDeflate: true` and a plain send loop;
 * - socket.io-deflate: socket.io with `perMessageDeflate: true`, `io.emit`;
 * - stabilizer-plain: the stabilizer without compression (the memory target's reference).
 * Per contender and size, one stack (fresh server, clients in their own processes):
 * 1. memory per idle connection: RSS and heap after GC with N clients, minus the same
 *    server's before any client, per connection;
 * 2. fan-out latency: one broadcast at a time, completion (until the last client has it) p50/p99;
 * 3. memory per connection again after those broadcasts (what per-socket compressors keep);
 * 4. sustained fan-out: ~100k deliveries, 4 broadcasts started per loop turn: deliveries/s
 *    and server CPU time (all threads, zlib's pool included) per delivery; its inverse,
 *    deliveries per server CPU-second, is the server's capacity whatever the clients' speed
 *    (here the clients, which inflate every message on the same two cores, bound deliveries/s).
 *
 * Run: npx tsx bench/compression.ts [--sizes=1000,5000] [--rounds=3] [--contenders=a,b] [--quick]
 */
import os from 'node:os'
import { spawnJson, type JsonProcess } from '../test/fixtures/json-process.js'
import type { ContenderName, ContenderSettings } from './contenders.js'

const arg = (name: string): string | undefined => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3)
const quick = process.argv.includes('--quick')
const sizes = (arg('sizes') ?? (quick ? '100' : '1000,5000')).split(',').map(Number)
const rounds = Number(arg('rounds') ?? (quick ? 1 : 3))
const messageSize = 4_096
const clientsPerProcess = 5_000

interface Contender { label: string, name: ContenderName, settings: ContenderSettings }
const all: Contender[] = [
  { label: 'stabilizer-shared', name: 'stabilizer', settings: { stabilizer: { compression: { strategy: 'shared' } } } },
  { label: 'stabilizer-per-socket', name: 'stabilizer', settings: { stabilizer: { compression: true } } },
  { label: 'ws-deflate', name: 'ws', settings: { perMessageDeflate: true } },
  { label: 'socket.io-deflate', name: 'socket.io', settings: { perMessageDeflate: true } },
  { label: 'stabilizer-plain', name: 'stabilizer', settings: {} }
]
const chosen = arg('contenders')?.split(',')
const contenders = chosen === undefined ? all : all.filter((c) => chosen.includes(c.label))

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }
const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
const percentile = (values: number[], q: number): number => { const sorted = [...values].sort((a, b) => a - b); return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] }

interface Memory { rss: number, heapUsed: number, connections: number }
interface CpuTime { user: number, system: number }

async function measure (contender: Contender, connections: number): Promise<Record<string, number>> {
  const server = spawnJson(process.execPath, ['--expose-gc', '--import', 'tsx', 'bench/server.ts', contender.name, JSON.stringify({ ...contender.settings, backlog: 4_096 })])
  const { port } = await server.next() as { port: number }
  const empty = await server.ask({ cmd: 'memory' }) as unknown as Memory
  const url = contender.name === 'socket.io' ? `http://127.0.0.1:${port}` : `ws://127.0.0.1:${port}/ws`
  const clients: JsonProcess[] = []
  const opens: Array<Promise<Record<string, unknown>>> = []
  for (let left = connections; left > 0; left -= clientsPerProcess) {
    const client = spawnJson(process.execPath, ['bench/clients.mjs', contender.name, url, String(Math.min(clientsPerProcess, left))])
    clients.push(client)
    opens.push(client.next())
  }
  await Promise.all(opens)
  try {
    await sleep(500)
    const idle = await server.ask({ cmd: 'memory' }) as unknown as Memory
    if (idle.connections < connections * 0.99) throw new Error(`${contender.label}: ${idle.connections} of ${connections} connected`)

    // Fan-out latency: one broadcast at a time, the next once every client has the last, so a
    // completion is one broadcast's and not a queue's (clients inflate every message, and on
    // two cores they are slower at it than the shared compressor is at sending).
    const broadcasts = quick ? 6 : 15
    for (let id = 0; id < broadcasts; id++) {
      await server.ask({ cmd: 'sequential', from: id, count: 1, size: messageSize, json: true, spacingMs: 0 })
      for (let stable = 0, previous = -1; stable < 100; await sleep(20)) {
        const counts = await Promise.all(clients.map(async (client) => await client.ask({ cmd: 'count' }) as { total: number }))
        const total = counts.reduce((sum, c) => sum + c.total, 0)
        if (total >= (id + 1) * idle.connections) break
        stable = total === previous ? stable + 1 : 0
        previous = total
      }
    }
    const completions: number[] = []
    let missing = 0
    const byId = new Map<number, { latency: number, deliveries: number }>()
    for (const client of clients) {
      const { ids } = await client.ask({ cmd: 'report' }) as { ids: Array<[number, number, number]> }
      for (const [id, latency, deliveries] of ids) {
        const entry = byId.get(id) ?? { latency: 0, deliveries: 0 }
        entry.latency = Math.max(entry.latency, latency)
        entry.deliveries += deliveries
        byId.set(id, entry)
      }
    }
    for (let id = 3; id < broadcasts; id++) { // the first 3 warm up
      const entry = byId.get(id)
      missing += idle.connections - (entry?.deliveries ?? 0)
      if (entry !== undefined) completions.push(entry.latency)
    }
    const afterBroadcasts = await server.ask({ cmd: 'memory' }) as unknown as Memory

    // Sustained fan-out.
    const count = quick ? 10 : Math.max(20, Math.round(100_000 / connections))
    await Promise.all(clients.map(async (client) => await client.ask({ cmd: 'report' })))
    const cpuBefore = await server.ask({ cmd: 'cpu' }) as unknown as CpuTime
    const started = process.hrtime.bigint()
    await server.ask({ cmd: 'burst', count, size: messageSize, json: true, perTurn: 4 })
    const expected = count * idle.connections
    let delivered = 0
    let lastAt = 0n
    for (let stable = 0, previous = -1; delivered < expected && stable < 30; await sleep(100)) {
      const counts = await Promise.all(clients.map(async (client) => await client.ask({ cmd: 'count' }) as { total: number, lastAt: string }))
      delivered = counts.reduce((sum, c) => sum + c.total, 0)
      lastAt = counts.reduce((max, c) => (BigInt(c.lastAt) > max ? BigInt(c.lastAt) : max), 0n)
      stable = delivered === previous ? stable + 1 : 0
      previous = delivered
    }
    const cpuAfter = await server.ask({ cmd: 'cpu' }) as unknown as CpuTime
    const cpuUs = cpuAfter.user + cpuAfter.system - cpuBefore.user - cpuBefore.system
    return {
      rssIdle: (idle.rss - empty.rss) / idle.connections,
      heapIdle: (idle.heapUsed - empty.heapUsed) / idle.connections,
      rssAfter: (afterBroadcasts.rss - empty.rss) / idle.connections,
      p50: percentile(completions, 0.5),
      p99: percentile(completions, 0.99),
      missing,
      perSecond: delivered / (Number(lastAt - started) / 1e9),
      delivered: delivered / expected * 100,
      cpuPerDelivery: cpuUs / delivered,
      capacity: delivered / (cpuUs / 1e6)
    }
  } finally {
    await Promise.all(clients.map(async (client) => await client.stop()))
    await server.stop()
  }
}

interface Column { key: string, label: string, digits: number, better: 'lower' | 'higher' }
const columns: Column[] = [
  { key: 'perSecond', label: 'deliveries/s', digits: 0, better: 'higher' },
  { key: 'cpuPerDelivery', label: 'server CPU µs per delivery', digits: 2, better: 'lower' },
  { key: 'capacity', label: 'deliveries per server CPU-second', digits: 0, better: 'higher' },
  { key: 'p50', label: 'completion p50 ms', digits: 1, better: 'lower' },
  { key: 'p99', label: 'completion p99 ms', digits: 1, better: 'lower' },
  { key: 'rssIdle', label: 'RSS B/idle conn', digits: 0, better: 'lower' },
  { key: 'heapIdle', label: 'heap B/idle conn', digits: 0, better: 'lower' },
  { key: 'rssAfter', label: 'RSS B/conn after broadcasts', digits: 0, better: 'lower' },
  { key: 'missing', label: 'deliveries missing (latency phase)', digits: 0, better: 'lower' },
  { key: 'delivered', label: '% delivered (sustained)', digits: 1, better: 'higher' }
]

console.log(`## Compressed broadcasts: ${messageSize}-byte JSON, every client negotiated permessage-deflate\n`)
console.log(`Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, Node ${process.version}; ${rounds} interleaved round(s); cells are medians (min–max).`)
const startedAt = Date.now()
for (const connections of sizes) {
  const results = new Map<string, Array<Record<string, number>>>(contenders.map((c) => [c.label, []]))
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? contenders : [...contenders].reverse()
    for (const contender of order) results.get(contender.label)!.push(await measure(contender, connections))
  }
  const mid = (label: string, key: string): number => median(results.get(label)!.map((r) => r[key]))
  console.log(`\n### ${connections} clients\n`)
  console.log(`| contender | ${columns.map((c) => `${c.label} (${c.better} is better)`).join(' | ')} |`)
  console.log(`| --- | ${columns.map(() => '---').join(' | ')} |`)
  for (const { label } of contenders) {
    const runs = results.get(label)!
    const cells = columns.map((c) => {
      const values = runs.map((r) => r[c.key])
      const range = values.length > 1 ? ` (${Math.min(...values).toFixed(c.digits)}–${Math.max(...values).toFixed(c.digits)})` : ''
      return `${mid(label, c.key).toFixed(c.digits)}${range}`
    })
    console.log(`| ${label} | ${cells.join(' | ')} |`)
  }
  const has = (label: string): boolean => results.has(label)
  const ratio = (label: string, base: string, key: string): string => (has(label) && has(base) ? `${(mid(label, key) / mid(base, key)).toFixed(2)}×` : '—')
  console.log('\nRatios of medians, same run:\n')
  console.log('| figure | stabilizer-shared vs ws-deflate | vs socket.io-deflate | vs stabilizer-per-socket | vs stabilizer-plain |')
  console.log('| --- | --- | --- | --- | --- |')
  for (const key of ['perSecond', 'capacity', 'cpuPerDelivery', 'p50', 'p99', 'rssIdle', 'heapIdle', 'rssAfter']) {
    const column = columns.find((c) => c.key === key)!
    console.log(`| ${column.label} | ${['ws-deflate', 'socket.io-deflate', 'stabilizer-per-socket', 'stabilizer-plain'].map((base) => ratio('stabilizer-shared', base, key)).join(' | ')} |`)
  }
}
console.log(`\nTotal time: ${Math.round((Date.now() - startedAt) / 1000)} s.`)
