/**
 * Whether the stabilizer's fan-out tail at 5k clients comes from yielding between turns
 * (`maxConcurrentBroadcast` sends per turn) or is run-to-run noise: the fan-out latency
 * scenario of bench/run.ts (sequential 100-byte broadcasts, completion = until the last
 * client has it) for raw ws and for the stabilizer at several `maxConcurrentBroadcast`
 * values, one interleaved run. A value at or above N never yields within a broadcast.
 *
 * Run: npx tsx bench/fanout-per-turn.ts [connections=5000] [rounds=3] [perTurn=250,1000,2500,100000] [broadcasts=200]
 */
import os from 'node:os'
import { spawnJson, type JsonProcess } from '../test/fixtures/json-process.js'
import type { ContenderName, ContenderSettings } from './contenders.js'

const connections = Number(process.argv[2] ?? 5_000)
const rounds = Number(process.argv[3] ?? 3)
const perTurnValues = (process.argv[4] ?? '250,1000,2500,100000').split(',').map(Number)
const broadcasts = Number(process.argv[5] ?? 200)
const clientsPerProcess = 5_000

interface Contender { label: string, name: ContenderName, settings: ContenderSettings }
const contenders: Contender[] = [
  { label: 'ws', name: 'ws', settings: {} },
  ...perTurnValues.map((perTurn) => ({ label: `stabilizer, ${perTurn} per turn`, name: 'stabilizer' as const, settings: { stabilizer: { maxConcurrentBroadcast: perTurn } } }))
]

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }
const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
const percentile = (values: number[], q: number): number => { const sorted = [...values].sort((a, b) => a - b); return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] }

async function measure (contender: Contender): Promise<Record<string, number>> {
  const server = spawnJson(process.execPath, ['--expose-gc', '--import', 'tsx', 'bench/server.ts', contender.name, JSON.stringify({ ...contender.settings, backlog: 4_096 })])
  const { port } = await server.next() as { port: number }
  const clients: JsonProcess[] = []
  const opens: Array<Promise<Record<string, unknown>>> = []
  for (let left = connections; left > 0; left -= clientsPerProcess) {
    const client = spawnJson(process.execPath, ['bench/clients.mjs', contender.name, `ws://127.0.0.1:${port}/ws`, String(Math.min(clientsPerProcess, left))])
    clients.push(client)
    opens.push(client.next())
  }
  await Promise.all(opens)
  try {
    await sleep(300)
    const sent = await server.ask({ cmd: 'sequential', count: broadcasts + 5, size: 100, spacingMs: connections >= 5_000 ? 40 : 12 }) as { sendLoopP50: number, maxStallMs: number }
    await sleep(300)
    const byId = new Map<number, number>()
    for (const client of clients) {
      const { ids } = await client.ask({ cmd: 'report' }) as { ids: Array<[number, number, number]> }
      for (const [id, latency] of ids) byId.set(id, Math.max(byId.get(id) ?? 0, latency))
    }
    const completions = [...byId].filter(([id]) => id >= 5).map(([, latency]) => latency)
    return { p50: percentile(completions, 0.5), p90: percentile(completions, 0.9), p99: percentile(completions, 0.99), max: Math.max(...completions), sendLoop: sent.sendLoopP50, stall: sent.maxStallMs }
  } finally {
    await Promise.all(clients.map(async (client) => await client.stop()))
    await server.stop()
  }
}

console.log(`## Fan-out latency by sends per turn: ${connections} clients, ${broadcasts} sequential 100-byte broadcasts\n`)
console.log(`Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, Node ${process.version}; ${rounds} interleaved rounds; cells are medians (each round's figure in brackets).\n`)
const results = new Map<string, Array<Record<string, number>>>(contenders.map((c) => [c.label, []]))
for (let round = 0; round < rounds; round++) {
  const order = round % 2 === 0 ? contenders : [...contenders].reverse()
  for (const contender of order) results.get(contender.label)!.push(await measure(contender))
}
const keys = ['p50', 'p90', 'p99', 'max', 'sendLoop', 'stall']
console.log(`| contender | ${keys.map((k) => `completion ${k} ms`.replace('completion sendLoop', 'send loop p50').replace('completion stall', 'longest stall')).join(' | ')} | p99 vs ws |`)
console.log(`| --- | ${keys.map(() => '---').join(' | ')} | --- |`)
const wsP99 = median(results.get('ws')!.map((r) => r.p99))
for (const { label } of contenders) {
  const runs = results.get(label)!
  const cells = keys.map((key) => `${median(runs.map((r) => r[key])).toFixed(1)} (${runs.map((r) => r[key].toFixed(1)).join(', ')})`)
  console.log(`| ${label} | ${cells.join(' | ')} | ${(median(runs.map((r) => r.p99)) / wsP99).toFixed(2)}× |`)
}
