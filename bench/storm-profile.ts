/**
 * Where a connection storm's server time goes: N clients connect at once to a fresh server of
 * each contender while the server's main thread is CPU-profiled (the inspector, started just
 * before the clients and stopped once all are open, so start-up and shutdown are not in it).
 * Prints per contender the busy time per connection by origin (this library, ws, Fastify,
 * Node…), the top self frames, and for the stabilizer the inclusive time of its own frames
 * per upgrade. Profiles are kept in `dir` for a closer look (Chrome DevTools, speedscope).
 *
 * Run: npx tsx bench/storm-profile.ts [connections=5000] [rounds=1] [dir=/tmp/storm-profiles] [contenders=stabilizer,fastify-websocket,ws]
 * A contender may carry settings: `stabilizer:{"stabilizer":{"heartbeatInterval":0}}`.
 */
import { mkdir, readFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { spawnJson, type JsonProcess } from '../test/fixtures/json-process.js'
import { summarize, type CpuProfile, type ProfileSummary } from './cpu-profile.js'

const connections = Number(process.argv[2] ?? 5_000)
const rounds = Number(process.argv[3] ?? 1)
const dir = process.argv[4] ?? '/tmp/storm-profiles'
const contenders = (process.argv[5] ?? 'stabilizer,fastify-websocket,ws').split(/,(?![^{]*\})/)
const clientsPerProcess = 5_000

interface Run { label: string, ms: number, failures: number, lagMs: number, overflows: number, cpuUs: number, summary: ProfileSummary }
interface CpuTime { user: number, system: number }

/**
 * The kernel's count of connections dropped because a listener's accept queue was full
 * (TcpExt ListenOverflows, this network namespace): a dropped handshake is retried by the
 * client after its SYN timeout (1 s, then 3 s), which a storm's duration then shows.
 */
async function listenOverflows (): Promise<number> {
  const lines = (await readFile('/proc/net/netstat', 'utf8')).split('\n')
  const header = lines.findIndex((line) => line.startsWith('TcpExt:'))
  const names = lines[header].split(' ')
  const values = lines[header + 1].split(' ')
  return Number(values[names.indexOf('ListenOverflows')])
}

async function once (spec: string, round: number): Promise<Run> {
  const colon = spec.indexOf(':')
  const name = colon < 0 ? spec : spec.slice(0, colon)
  const settings = colon < 0 ? '{}' : spec.slice(colon + 1)
  const server = spawnJson(process.execPath, ['--expose-gc', '--import', 'tsx', 'bench/server.ts', name, settings])
  const { port } = await server.next() as { port: number }
  const url = name === 'socket.io' ? `http://127.0.0.1:${port}` : `ws://127.0.0.1:${port}/ws`
  await server.ask({ cmd: 'lagStart' })
  await server.ask({ cmd: 'profileStart', intervalUs: 100 })
  const overflowsBefore = await listenOverflows()
  const cpuBefore = await server.ask({ cmd: 'cpu' }) as unknown as CpuTime
  const clients: JsonProcess[] = []
  const opens: Array<Promise<Record<string, unknown>>> = []
  for (let left = connections; left > 0; left -= clientsPerProcess) {
    const client = spawnJson(process.execPath, ['bench/clients.mjs', name, url, String(Math.min(clientsPerProcess, left))])
    clients.push(client)
    opens.push(client.next())
  }
  const opened = await Promise.all(opens)
  const overflows = await listenOverflows() - overflowsBefore
  const cpuAfter = await server.ask({ cmd: 'cpu' }) as unknown as CpuTime
  const file = path.join(dir, `${spec.replace(/[^a-z0-9.-]+/gi, '_')}-${round}.cpuprofile`)
  await server.ask({ cmd: 'profileStop', path: file })
  const { maxLagMs } = await server.ask({ cmd: 'lagStop' }) as { maxLagMs: number }
  await Promise.all(clients.map(async (client) => await client.stop()))
  await server.stop()
  const summary = summarize(JSON.parse(await readFile(file, 'utf8')) as CpuProfile)
  return {
    label: spec,
    ms: Math.max(...opened.map((o) => o.ms as number)),
    failures: opened.reduce((sum, o) => sum + (o.failures as number), 0),
    lagMs: maxLagMs,
    overflows,
    cpuUs: cpuAfter.user + cpuAfter.system - cpuBefore.user - cpuBefore.system,
    summary
  }
}

const perConnection = (ms: number): string => (ms * 1000 / connections).toFixed(1)

await mkdir(dir, { recursive: true })
console.log(`# Storm profile: ${connections} clients at once, ${rounds} round(s); ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, Node ${process.version}`)
console.log(`Profiles in ${dir}. The profiler (100 µs sampling) slows the server: compare contenders within this run only.\n`)
const runs: Run[] = []
for (let round = 0; round < rounds; round++) {
  const order = round % 2 === 0 ? contenders : [...contenders].reverse()
  for (const spec of order) runs.push(await once(spec, round))
}

console.log('| contender | round | time to all open (ms) | failures | accept-queue overflows | longest lag (ms) | profiled window (ms) | main thread busy, wall (ms) | server CPU µs per connection (all threads) |')
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
for (const [i, run] of runs.entries()) {
  console.log(`| ${run.label} | ${Math.floor(i / contenders.length)} | ${run.ms.toFixed(0)} | ${run.failures} | ${run.overflows} | ${run.lagMs.toFixed(1)} | ${run.summary.windowMs.toFixed(0)} | ${run.summary.busyMs.toFixed(0)} | ${(run.cpuUs / connections).toFixed(1)} |`)
}

const medianOf = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
console.log('\n## Medians over rounds\n')
console.log('| contender | time to all open (ms) | connections/s | longest lag (ms) | server CPU µs per connection |')
console.log('| --- | --- | --- | --- | --- |')
for (const label of contenders) {
  const mine = runs.filter((run) => run.label === label)
  const ms = medianOf(mine.map((run) => run.ms))
  console.log(`| ${label} | ${ms.toFixed(0)} | ${(connections / ms * 1000).toFixed(0)} | ${medianOf(mine.map((run) => run.lagMs)).toFixed(1)} | ${medianOf(mine.map((run) => run.cpuUs / connections)).toFixed(1)} |`)
}

// Self time per origin, µs per connection, summed over rounds then averaged.
const origins = new Set(runs.flatMap((run) => run.summary.byOrigin.map((o) => o.origin)))
const mean = (label: string, pick: (summary: ProfileSummary) => number): number => {
  const mine = runs.filter((run) => run.label === label)
  return mine.reduce((sum, run) => sum + pick(run.summary), 0) / mine.length
}
console.log('\n## Self time by origin, µs per connection (mean over rounds)\n')
console.log(`| origin | ${contenders.join(' | ')} |`)
console.log(`| --- | ${contenders.map(() => '---').join(' | ')} |`)
const originRows = [...origins].map((origin) => ({ origin, values: contenders.map((label) => mean(label, (s) => s.byOrigin.find((o) => o.origin === origin)?.ms ?? 0)) }))
originRows.sort((a, b) => b.values[0] - a.values[0])
for (const row of originRows) console.log(`| ${row.origin} | ${row.values.map(perConnection).join(' | ')} |`)

for (const label of contenders) {
  const last = runs.filter((run) => run.label === label).at(-1)!
  console.log(`\n## ${label}: top 25 self frames (last round), µs per connection\n`)
  console.log('| frame | origin | µs/conn |')
  console.log('| --- | --- | --- |')
  for (const frame of last.summary.self.slice(0, 25)) console.log(`| \`${frame.frame}\` | ${frame.origin} | ${perConnection(frame.ms)} |`)
}

for (const label of contenders.filter((c) => c.startsWith('stabilizer'))) {
  const mine = runs.filter((run) => run.label === label)
  const totals = new Map<string, number>()
  for (const run of mine) {
    for (const frame of run.summary.inclusive) {
      if (frame.origin === 'stabilizer lib') totals.set(frame.frame, (totals.get(frame.frame) ?? 0) + frame.ms / mine.length)
    }
  }
  console.log(`\n## ${label}: the library's frames, inclusive (callees counted), µs per connection (mean over rounds)\n`)
  console.log('| frame | µs/conn |')
  console.log('| --- | --- |')
  for (const [frame, ms] of [...totals].sort((a, b) => b[1] - a[1]).slice(0, 40)) console.log(`| \`${frame}\` | ${perConnection(ms)} |`)
}
