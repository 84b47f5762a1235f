/**
 * Scale-out side by side (issues 20 and 24): cross-instance fan-out through Redis, the
 * stabilizer's `redisAdapter` (on a single Redis and on a 3-master Redis Cluster) against
 * socket.io with `@socket.io/redis-adapter` (pub/sub) and `@socket.io/redis-streams-adapter`,
 * in one run, contenders alternating within every round (A B C D, D C B A, …). Per contender:
 * a private Redis (or Cluster), 3 server instances and their clients, each in processes of
 * their own, spoken to over stdin/stdout only; broadcasts are issued from one instance, so two
 * thirds of the recipients are remote. Then one stabilizer.v1 client's resume of missed
 * messages on another instance, against socket.io's connection-state recovery (streams adapter).
 * Cells are medians (min–max); ratios against the socket.io adapters from the same run.
 *
 * Run: `npx tsx bench/scaleout.ts [rounds=3] [--sizes=1000,3000] [--only=fanout,resume] [--contenders=…]`;
 * `--quick` for a smoke run (tiny sizes, one round, short windows: not a measurement).
 */
import os from 'node:os'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { Redis } from 'ioredis'
import { spawnJson, type JsonProcess } from '../test/fixtures/json-process.js'
import { startRedisServer } from '../test/fixtures/redis-server.js'
import { startRedisCluster } from '../test/fixtures/redis-cluster.js'
import type { ScaleoutContender, ScaleoutSettings } from './scaleout-server.js'
import { mergeDeliveries, type DeliveryReport } from './deliveries.js'

const quick = process.argv.includes('--quick')
const option = (name: string): string | undefined => process.argv.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3)
const numbers = process.argv.slice(2).filter((arg) => /^\d+$/.test(arg)).map(Number)
const rounds = quick ? 1 : numbers[0] ?? 3
const sizes = option('sizes')?.split(',').map(Number) ?? (quick ? [30, 90] : [1_000, 3_000])
const only = option('only')?.split(',')
const selected = (part: string): boolean => only === undefined || only.includes(part)
const instances = 3
/**
 * Redis work is counted over windows of equal length, one idle and one with the sequential
 * broadcasts: the stabilizer refreshes every connected client's presence once per 10 s per
 * instance, so 10 s windows hold the same background work and their difference is the
 * broadcasts' cost. Quick runs use short windows: their Redis figures are not comparable.
 */
const windowMs = quick ? 1_000 : 10_000
const sequential = quick ? 10 : 200
/** The first sequential broadcasts warm up connections and caches: not in the latency figures. */
const warmup = quick ? 2 : 5
const sustainedDeliveries = quick ? 3_000 : 450_000
const resumeMessages = quick ? 100 : 1_000
const resumesPerRound = quick ? 1 : 5
const size = 100
const clientsPerProcess = 5_000
const allContenders: ScaleoutContender[] = ['stabilizer', 'stabilizer-cluster', 'socket.io-redis', 'socket.io-streams']
/** `--contenders=stabilizer,socket.io-streams` runs a subset (ratios against an absent reference show as —). */
const contenders = option('contenders')?.split(',').filter((name): name is ScaleoutContender => (allContenders as string[]).includes(name)) ?? allContenders
const references: ScaleoutContender[] = ['socket.io-redis', 'socket.io-streams']
const isSocketIo = (contender: ScaleoutContender): boolean => contender.startsWith('socket.io')

// ---- processes: every one started is stopped, on success, failure, signal or deadline ----
interface Stoppable { stop: () => Promise<void> }
const live = new Set<Stoppable>()
function track<T extends Stoppable> (thing: T): T { live.add(thing); return thing }
async function release (thing: Stoppable): Promise<void> { live.delete(thing); await thing.stop() }
async function stopAll (): Promise<void> {
  const all = [...live]
  live.clear()
  await Promise.allSettled(all.map(async (thing) => { await thing.stop() }))
}
const abort = (reason: string, code: number): void => {
  console.error(reason)
  void stopAll().finally(() => process.exit(code))
}
process.once('SIGINT', () => abort('interrupted', 130))
process.once('SIGTERM', () => abort('terminated', 143))
setTimeout(() => abort('bench/scaleout.ts: over its time limit, stopped', 1), quick ? 120_000 : 40 * 60_000).unref()

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }
async function within<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([promise, new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms) })])
  } finally {
    clearTimeout(timer)
  }
}
const median = (values: number[]): number => { const sorted = [...values].sort((a, b) => a - b); return sorted[Math.floor(sorted.length / 2)] }
const percentile = (values: number[], q: number): number => { const sorted = [...values].sort((a, b) => a - b); return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] }

// ---- Redis: a private server or cluster per contender run, never the machine's ----
interface Store { settings: ScaleoutSettings['redis'], info: Redis[], stop: () => Promise<void> }

async function startStore (cluster: boolean): Promise<Store> {
  const server = cluster ? await startRedisCluster({ masters: 3 }) : await startRedisServer()
  track(server)
  const ports = 'nodes' in server ? server.nodes.map((node) => node.port) : [server.port]
  const info = ports.map((port) => {
    const client = new Redis({ host: '127.0.0.1', port, lazyConnect: false })
    client.on('error', () => {})
    return client
  })
  return {
    settings: 'nodes' in server ? { cluster: server.startupNodes } : server.url,
    info,
    stop: async () => {
      for (const client of info) client.disconnect()
      await release(server)
    }
  }
}

interface Snapshot { calls: Map<string, number>, redisCpuS: number, serverCpuUs: number }

/** Every command Redis ran (those run inside scripts included), Redis CPU over all nodes, the instances' CPU. */
async function snapshot (stack: Stack): Promise<Snapshot> {
  const [texts, cpus] = await Promise.all([
    Promise.all(stack.store.info.map(async (client) => await client.call('INFO', 'commandstats', 'cpu') as string)),
    Promise.all(stack.servers.map(async (server) => await ask(server, { cmd: 'cpu' })))
  ])
  const calls = new Map<string, number>()
  let redisCpuS = 0
  for (const text of texts) {
    for (const line of text.split('\r\n')) {
      const command = /^cmdstat_([^:]+):calls=(\d+)/.exec(line)
      if (command !== null && command[1] !== 'info') calls.set(command[1], (calls.get(command[1]) ?? 0) + Number(command[2]))
      const cpu = /^used_cpu_(?:sys|user):([\d.]+)$/.exec(line)
      if (cpu !== null) redisCpuS += Number(cpu[1])
    }
  }
  return { calls, redisCpuS, serverCpuUs: cpus.reduce((sum, cpu) => sum + (cpu.cpuUs as number), 0) }
}

interface WindowResult { calls: Map<string, number>, total: number, redisCpuS: number, serverCpuUs: number, action: Record<string, unknown> | undefined }

/** Snapshots `windowMs` apart; `action` runs inside, from `startAt` (process.hrtime ns). */
async function measureWindow (stack: Stack, action?: (startAt: bigint) => Promise<Record<string, unknown>>): Promise<WindowResult> {
  const before = await snapshot(stack)
  const opened = process.hrtime.bigint()
  const running = action?.(opened + 50_000_000n)
  await sleep(Number(opened + BigInt(windowMs) * 1_000_000n - process.hrtime.bigint()) / 1e6)
  const after = await snapshot(stack)
  const done = await running
  const calls = new Map<string, number>()
  for (const [name, n] of after.calls) calls.set(name, n - (before.calls.get(name) ?? 0))
  return { calls, total: [...calls.values()].reduce((a, b) => a + b, 0), redisCpuS: after.redisCpuS - before.redisCpuS, serverCpuUs: after.serverCpuUs - before.serverCpuUs, action: done }
}

// ---- a stack: store, 3 instances, their clients ----
interface Stack {
  contender: ScaleoutContender
  store: Store
  servers: JsonProcess[]
  ports: number[]
  clients: JsonProcess[]
  /** Clients held by each instance. */
  held: number[]
  /** When every instance was listening (ms, performance.now()). */
  listenedAt: number
}

async function ask (child: JsonProcess, command: Record<string, unknown>, ms = 120_000): Promise<Record<string, unknown>> {
  return await within(child.ask(command), ms, JSON.stringify(command))
}

function spawnTracked (args: string[]): JsonProcess {
  const child = spawnJson(process.execPath, args)
  return track(child)
}

async function startStack (contender: ScaleoutContender, recovery = false): Promise<Stack> {
  const store = track(await startStore(contender === 'stabilizer-cluster'))
  const settings: ScaleoutSettings = { redis: store.settings, recovery }
  const servers = Array.from({ length: instances }, () => spawnTracked(['--import', 'tsx', 'bench/scaleout-server.ts', contender, JSON.stringify(settings)]))
  const ports = (await within(Promise.all(servers.map(async (server) => await server.next())), 60_000, `${contender} instances listening`)).map((line) => line.port as number)
  return { contender, store, servers, ports, clients: [], held: ports.map(() => 0), listenedAt: performance.now() }
}

const clientUrl = (stack: Stack, i: number): string => (isSocketIo(stack.contender) ? `http://127.0.0.1:${stack.ports[i]}` : `ws://127.0.0.1:${stack.ports[i]}/ws`)

/** Adds clients so that the instances hold `total` between them, evenly. */
async function growClients (stack: Stack, total: number): Promise<void> {
  const targets = stack.held.map((_, i) => Math.floor(total / instances) + (i < total % instances ? 1 : 0))
  const opening: Array<Promise<Record<string, unknown>>> = []
  for (let i = 0; i < instances; i++) {
    for (let left = targets[i] - stack.held[i]; left > 0; left -= clientsPerProcess) {
      const client = spawnTracked(['bench/clients.mjs', isSocketIo(stack.contender) ? 'socket.io' : 'stabilizer', clientUrl(stack, i), String(Math.min(left, clientsPerProcess))])
      stack.clients.push(client)
      opening.push(client.next())
    }
  }
  const opened = await within(Promise.all(opening), 60_000, `${stack.contender}: ${total} clients opening`)
  const failures = opened.reduce((sum, line) => sum + (line.failures as number), 0)
  if (failures > 0) console.error(`${stack.contender}: ${failures} handshakes failed opening ${total} clients`)
  stack.held = targets
  const deadline = Date.now() + 15_000
  for (;;) {
    const counts = await Promise.all(stack.servers.map(async (server) => (await ask(server, { cmd: 'connections' })).connections as number))
    if (counts.every((n, i) => n === targets[i])) return
    if (Date.now() > deadline) throw new Error(`${stack.contender}: instances hold ${counts.join(', ')} connections, expected ${targets.join(', ')}`)
    await sleep(100)
  }
}

async function stopStack (stack: Stack): Promise<void> {
  await Promise.allSettled(stack.clients.map(async (client) => { await release(client) }))
  await Promise.allSettled(stack.servers.map(async (server) => { await release(server) }))
  await release(stack.store)
}

/** Per broadcast id: the latest delivery's latency (ms) and the deliveries, over every client process. */
async function collect (stack: Stack): Promise<Map<number, { latency: number, deliveries: number }>> {
  const reports: DeliveryReport[] = []
  for (const client of stack.clients) reports.push(await ask(client, { cmd: 'report' }) as DeliveryReport)
  return mergeDeliveries(reports)
}

// ---- fan-out ----
const ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim())

/** CPU time so far (µs) of every client process (from /proc: the clients script has no command for it). */
function clientsCpuUs (stack: Stack): number {
  let ticks = 0
  for (const client of stack.clients) {
    const stat = readFileSync(`/proc/${client.child.pid!}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    ticks += Number(fields[11]) + Number(fields[12]) // utime, stime
  }
  return ticks / ticksPerSecond * 1e6
}

/** Read or write system calls so far of these processes (/proc/<pid>/io: every thread's). */
function syscalls (processes: JsonProcess[], field: 'syscr' | 'syscw'): number {
  let sum = 0
  for (const { child } of processes) {
    const line = readFileSync(`/proc/${child.pid!}/io`, 'utf8').split('\n').find((l) => l.startsWith(`${field}:`))
    sum += Number(line?.slice(field.length + 1) ?? Number.NaN)
  }
  return sum
}

interface SustainedCounters { instancesUs: number, clientsUs: number, redisS: number, instanceWrites: number, clientReads: number }

async function sustainedCounters (stack: Stack): Promise<SustainedCounters> {
  const { serverCpuUs, redisCpuS } = await snapshot(stack)
  return { instancesUs: serverCpuUs, clientsUs: clientsCpuUs(stack), redisS: redisCpuS, instanceWrites: syscalls(stack.servers, 'syscw'), clientReads: syscalls(stack.clients, 'syscr') }
}

type Figures = Record<string, number>
interface FanoutResult { figures: Figures, perBroadcast: Map<string, number> }

async function measureSize (stack: Stack, clients: number): Promise<FanoutResult> {
  await growClients(stack, clients)
  // The stabilizer's first presence refresh, 10 s after each instance started, loads its script
  // into the fresh Redis (every held client's EVALSHA fails, then EVAL): once, so not in a window.
  await sleep(Math.max(quick ? 300 : 1_000, stack.listenedAt + (quick ? 0 : 10_500) - performance.now()))
  const idle = await measureWindow(stack)
  await collect(stack) // forget what arrived so far
  const spacingMs = (windowMs - 250) / sequential
  const paced = await measureWindow(stack, async (startAt) => await ask(stack.servers[0], { cmd: 'paced', count: sequential, from: 0, size, spacingMs, startAt: String(startAt) }))
  await sleep(500)
  const byId = await collect(stack)
  const completions = [...byId].filter(([id]) => id >= warmup && id < sequential).map(([, entry]) => entry.latency)
  const deliveredPaced = [...byId].filter(([id]) => id < sequential).reduce((sum, [, entry]) => sum + entry.deliveries, 0)
  const perBroadcast = new Map<string, number>()
  for (const [name, n] of paced.calls) perBroadcast.set(name, (n - (idle.calls.get(name) ?? 0)) / sequential)

  // Sustained: broadcasts started 4 per loop turn, up to 64 unsettled, until every client has every one.
  const count = Math.max(10, Math.round(sustainedDeliveries / clients))
  const expected = count * clients
  const cpuBefore = await sustainedCounters(stack)
  const started = process.hrtime.bigint()
  const sending = ask(stack.servers[0], { cmd: 'burst', count, from: 1_000_000, size, perTurn: 4, inFlight: 64 })
  let delivered = 0
  let lastAt = 0n
  const deadline = Date.now() + (quick ? 20_000 : 90_000)
  for (let stable = 0, previous = -1; delivered < expected && stable < 20 && Date.now() < deadline; await sleep(100)) {
    const counts = await Promise.all(stack.clients.map(async (client) => await ask(client, { cmd: 'count' }) as { total: number, lastAt: string }))
    delivered = counts.reduce((sum, c) => sum + c.total, 0)
    lastAt = counts.reduce((max, c) => (BigInt(c.lastAt) > max ? BigInt(c.lastAt) : max), 0n)
    stable = delivered === previous ? stable + 1 : 0
    previous = delivered
  }
  const sent = await sending
  const cpuAfter = await sustainedCounters(stack)
  await collect(stack)
  return {
    figures: {
      perSecond: delivered / (Number(lastAt - started) / 1e9),
      sustainedInstancesCpu: (cpuAfter.instancesUs - cpuBefore.instancesUs) / delivered,
      sustainedClientsCpu: (cpuAfter.clientsUs - cpuBefore.clientsUs) / delivered,
      sustainedRedisCpu: (cpuAfter.redisS - cpuBefore.redisS) * 1e6 / delivered,
      instanceWrites: (cpuAfter.instanceWrites - cpuBefore.instanceWrites) / delivered,
      clientReads: (cpuAfter.clientReads - cpuBefore.clientReads) / delivered,
      sustainedMissing: expected - delivered,
      unpublished: (sent.failed as number) + (paced.action?.failed as number),
      p50: percentile(completions, 0.5),
      p99: percentile(completions, 0.99),
      pacedMissing: sequential * clients - deliveredPaced,
      commands: (paced.total - idle.total) / sequential,
      redisCpuUs: (paced.redisCpuS - idle.redisCpuS) * 1e6 / sequential,
      idleCommandsPerS: idle.total / (windowMs / 1000),
      idleRedisCpuPct: idle.redisCpuS / (windowMs / 1000) * 100,
      serverCpuUsPerDelivery: (paced.serverCpuUs - idle.serverCpuUs) / (sequential * clients)
    },
    perBroadcast
  }
}

async function fanout (contender: ScaleoutContender): Promise<FanoutResult[]> {
  const stack = await startStack(contender)
  try {
    const results: FanoutResult[] = []
    for (const clients of sizes) results.push(await measureSize(stack, clients))
    return results
  } finally {
    await stopStack(stack)
  }
}

// ---- resume ----
type ResumeContender = 'stabilizer' | 'socket.io-streams'

async function resume (contender: ResumeContender): Promise<Figures> {
  const stack = await startStack(contender, true)
  const peer = spawnTracked(['--import', 'tsx', 'bench/scaleout-peer.ts'])
  const kind = contender === 'stabilizer' ? 'stabilizer' : 'socket.io'
  const url = (i: number): string => (kind === 'stabilizer' ? `ws://127.0.0.1:${stack.ports[i]}` : `http://127.0.0.1:${stack.ports[i]}`)
  try {
    const times: number[] = []
    const welcomes: number[] = []
    for (let r = 0; r < resumesPerRound; r++) {
      const id = `resume-${r}`
      const group = `room-${r}`
      // Joins a group on instance 1, receives one message (its position / offset), drops.
      await ask(peer, { cmd: 'open', kind, url: url(1), id, room: group })
      if (kind === 'stabilizer' && (await ask(stack.servers[1], { cmd: 'join', id, group })).joined !== true) throw new Error('join failed')
      await ask(stack.servers[0], { cmd: 'burst', count: 1, from: 0, size, group, perTurn: 1, inFlight: 1 })
      await ask(peer, { cmd: 'wait', count: 1 }).catch(async (err: unknown) => {
        const seen = kind === 'stabilizer' ? JSON.stringify(await ask(stack.servers[1], { cmd: 'client', id })) : ''
        throw new Error(`${contender}, resume ${r}: the message before the drop: ${String(err)} ${seen}`)
      })
      await ask(peer, { cmd: 'drop' })
      await sleep(300)
      // Instance 0 broadcasts to the group while the client is away; it resumes on instance 2.
      await ask(stack.servers[0], { cmd: 'burst', count: resumeMessages, from: 1, size, group, perTurn: 4, inFlight: 64 })
      const result = await ask(peer, { cmd: 'resume', url: url(2), expect: resumeMessages }) as { ms: number, welcomeMs: number, received: number, resume: { outcome?: string, replayed?: number } | null }
      if (kind === 'stabilizer' && (result.resume?.outcome !== 'full' || result.resume.replayed !== resumeMessages)) console.error(`stabilizer resume: ${JSON.stringify(result.resume)}`)
      times.push(result.ms)
      welcomes.push(result.welcomeMs)
      await ask(peer, { cmd: 'close' })
    }
    return { ms: median(times), welcomeMs: median(welcomes) }
  } finally {
    await release(peer)
    await stopStack(stack)
  }
}

// ---- tables ----
const digitsFor = (value: number): number => (Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2)
const number = (value: number, digits = digitsFor(value)): string => value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }).replace(/,/g, ' ')

function cell (values: number[], digits?: number): string {
  const mid = median(values)
  const d = digits ?? digitsFor(mid)
  return values.length > 1 ? `${number(mid, d)} (${number(Math.min(...values), d)}–${number(Math.max(...values), d)})` : number(mid, d)
}

const ratio = (value: number, base: number): string => (base === 0 || !Number.isFinite(base) || !Number.isFinite(value) ? '—' : `${(value / base).toFixed(2)}×`)

interface Column { label: string, values: (contender: ScaleoutContender) => number[] | undefined, digits?: number, /** Ratios against the socket.io adapters. */ ratio?: boolean }

function table (title: string, rows: ScaleoutContender[], columns: Column[]): void {
  console.log(`\n#### ${title}\n`)
  const headers: string[] = ['contender']
  for (const column of columns) {
    headers.push(column.label)
    if (column.ratio === true) for (const reference of references) headers.push(`vs ${reference}`)
  }
  console.log(`| ${headers.join(' | ')} |`)
  console.log(`| ${headers.map(() => '---').join(' | ')} |`)
  for (const row of rows) {
    const cells: string[] = [row]
    for (const column of columns) {
      const values = column.values(row)
      cells.push(values === undefined || values.length === 0 ? '—' : cell(values, column.digits))
      if (column.ratio === true) {
        for (const reference of references) {
          const base = column.values(reference)
          cells.push(values === undefined || base === undefined || values.length === 0 || base.length === 0 ? '—' : ratio(median(values), median(base)))
        }
      }
    }
    console.log(`| ${cells.join(' | ')} |`)
  }
}

// ---- the run ----
const startedAt = Date.now()
const loads: number[] = [os.loadavg()[0]]
const fanoutResults = new Map<ScaleoutContender, FanoutResult[][]>(contenders.map((name) => [name, []]))
const resumeResults = new Map<ResumeContender, Figures[]>([['stabilizer', []], ['socket.io-streams', []]])

console.log(`## Scale-out benchmark${quick ? ' (quick smoke run: tiny sizes, short windows, not a measurement)' : ''}\n`)
console.log(`${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}, ${new Date().toISOString().slice(0, 10)}. ${rounds} interleaved round(s); ${instances} instances per contender; clients ${sizes.join(' and ')} spread evenly over them; broadcasts issued from one instance; ${size}-byte messages.`)

try {
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? contenders : [...contenders].reverse()
    if (selected('fanout')) {
      for (const contender of order) {
        fanoutResults.get(contender)!.push(await fanout(contender))
        loads.push(os.loadavg()[0])
        console.error(`round ${round + 1}: ${contender} done (${Math.round((Date.now() - startedAt) / 1000)} s, load ${os.loadavg()[0].toFixed(2)})`)
      }
    }
    if (selected('resume')) {
      const resumers = (['stabilizer', 'socket.io-streams'] as const).filter((contender) => contenders.includes(contender))
      for (const contender of round % 2 === 0 ? resumers : [...resumers].reverse()) {
        resumeResults.get(contender)!.push(await resume(contender))
        loads.push(os.loadavg()[0])
      }
    }
  }
} finally {
  await stopAll()
}

const fig = (contender: ScaleoutContender, sizeIndex: number, key: string): number[] | undefined => fanoutResults.get(contender)?.map((runs) => runs[sizeIndex].figures[key])
const sizeLabel = (clients: number): string => (clients >= 1000 && clients % 1000 === 0 ? `${clients / 1000}k` : String(clients))

if (selected('fanout')) {
  const sustainedCounts = sizes.map((clients) => Math.max(10, Math.round(sustainedDeliveries / clients)))
  table(`Sustained cross-instance fan-out: ${sizes.map((n, i) => `${sustainedCounts[i]} broadcasts to ${n} clients`).join(', ')}; 4 started per loop turn (deliveries/s: higher is better)`, contenders, sizes.flatMap((clients, i) => [
    { label: `${sizeLabel(clients)} deliveries/s`, values: (c: ScaleoutContender) => fig(c, i, 'perSecond'), digits: 0, ratio: true },
    { label: `${sizeLabel(clients)} missing`, values: (c: ScaleoutContender) => fig(c, i, 'sustainedMissing'), digits: 0 }
  ]))
  table(`Sequential broadcasts: ${sequential} paced over ${windowMs / 1000} s, completion = until the last client has it (ms, lower is better; the first ${warmup} not counted)`, contenders, sizes.flatMap((clients, i) => [
    { label: `${sizeLabel(clients)} p50`, values: (c: ScaleoutContender) => fig(c, i, 'p50'), digits: 2 },
    { label: `${sizeLabel(clients)} p99`, values: (c: ScaleoutContender) => fig(c, i, 'p99'), digits: 2, ratio: true },
    { label: `${sizeLabel(clients)} missing`, values: (c: ScaleoutContender) => fig(c, i, 'pacedMissing'), digits: 0 }
  ]))
  table(`Redis per broadcast: every command Redis ran (script-internal ones included) and its CPU, over the ${sequential} sequential broadcasts' window minus an idle window of the same length (lower is better)`, contenders, [
    ...sizes.map((clients, i) => ({ label: `commands/broadcast ${sizeLabel(clients)}`, values: (c: ScaleoutContender) => fig(c, i, 'commands'), digits: 1 })),
    ...sizes.map((clients, i) => ({ label: `Redis CPU µs/broadcast ${sizeLabel(clients)}`, values: (c: ScaleoutContender) => fig(c, i, 'redisCpuUs'), digits: 0, ratio: i === sizes.length - 1 }))
  ])
  table('Where the CPU goes in the sustained fan-out: µs per delivery, the 3 instances / the client processes / Redis (lower is better)', contenders, sizes.flatMap((clients, i) => [
    { label: `${sizeLabel(clients)} instances`, values: (c: ScaleoutContender) => fig(c, i, 'sustainedInstancesCpu'), digits: 2 },
    { label: `${sizeLabel(clients)} clients`, values: (c: ScaleoutContender) => fig(c, i, 'sustainedClientsCpu'), digits: 2 },
    { label: `${sizeLabel(clients)} Redis`, values: (c: ScaleoutContender) => fig(c, i, 'sustainedRedisCpu'), digits: 2 }
  ]))
  table('System calls per delivery in the sustained fan-out: the instances\' writes, the client processes\' reads (/proc/<pid>/io)', contenders, sizes.flatMap((clients, i) => [
    { label: `${sizeLabel(clients)} instance writes`, values: (c: ScaleoutContender) => fig(c, i, 'instanceWrites'), digits: 3 },
    { label: `${sizeLabel(clients)} client reads`, values: (c: ScaleoutContender) => fig(c, i, 'clientReads'), digits: 3 }
  ]))
  table('Background (an idle window: connected clients, no broadcasts) and the instances\' CPU per delivery in the sequential window', contenders, [
    ...sizes.map((clients, i) => ({ label: `idle Redis commands/s ${sizeLabel(clients)}`, values: (c: ScaleoutContender) => fig(c, i, 'idleCommandsPerS'), digits: 0 })),
    ...sizes.map((clients, i) => ({ label: `idle Redis CPU % ${sizeLabel(clients)}`, values: (c: ScaleoutContender) => fig(c, i, 'idleRedisCpuPct'), digits: 2 })),
    ...sizes.map((clients, i) => ({ label: `instances' CPU µs/delivery, sequential ${sizeLabel(clients)}`, values: (c: ScaleoutContender) => fig(c, i, 'serverCpuUsPerDelivery'), digits: 2 }))
  ])
  console.log('\nCommands per broadcast by name (medians over rounds; idle window subtracted; |n| ≥ 0.05):\n')
  for (const contender of contenders) {
    const parts = sizes.map((clients, i) => {
      const names = new Set(fanoutResults.get(contender)!.flatMap((runs) => [...runs[i].perBroadcast.keys()]))
      const entries = [...names].map((name) => [name, median(fanoutResults.get(contender)!.map((runs) => runs[i].perBroadcast.get(name) ?? 0))] as const)
        .filter(([, n]) => Math.abs(n) >= 0.05).sort((a, b) => b[1] - a[1])
      return `${sizeLabel(clients)}: ${entries.map(([name, n]) => `${name} ${n.toFixed(2)}`).join(', ')}`
    })
    console.log(`- ${contender} — ${parts.join('; ')}`)
  }
  const unpublished = contenders.flatMap((c) => sizes.flatMap((_, i) => fig(c, i, 'unpublished') ?? [])).reduce((a, b) => a + b, 0)
  if (unpublished > 0) console.log(`\nBroadcasts not published (Redis unavailable): ${unpublished}`)

  const mid = (contender: ScaleoutContender, i: number, key: string): number => {
    const values = fig(contender, i, key)
    return values === undefined || values.length === 0 ? Number.NaN : median(values)
  }
  console.log('\nTargets:')
  for (const [i, clients] of sizes.entries()) {
    const best = Math.max(...references.map((r) => mid(r, i, 'perSecond')))
    console.log(`- deliveries/s at ${sizeLabel(clients)}, ≥ 1.5× the better socket.io adapter: stabilizer ${ratio(mid('stabilizer', i, 'perSecond'), best)}, stabilizer-cluster ${ratio(mid('stabilizer-cluster', i, 'perSecond'), best)}`)
  }
  for (const contender of contenders) {
    console.log(`- commands/broadcast ${sizeLabel(sizes[sizes.length - 1])} / ${sizeLabel(sizes[0])}, ${contender}: ${ratio(mid(contender, sizes.length - 1, 'commands'), mid(contender, 0, 'commands'))}`)
  }
}

if (selected('resume')) {
  const resumeRows = (['stabilizer', 'socket.io-streams'] as const).filter((contender) => contenders.includes(contender))
  console.log(`\n#### Resume on another instance: ${resumeMessages} missed ${size}-byte messages (a group / room), connect → last replayed message received; median of ${resumesPerRound} per round\n`)
  console.log('| contender | connect → last message ms | connect → welcome / connect ms | vs socket.io-streams |')
  console.log('| --- | --- | --- | --- |')
  const base = resumeRows.includes('socket.io-streams') ? median(resumeResults.get('socket.io-streams')!.map((r) => r.ms)) : Number.NaN
  for (const row of resumeRows) {
    const runs = resumeResults.get(row)!
    console.log(`| ${row === 'socket.io-streams' ? 'socket.io-streams (connection-state recovery)' : row} | ${cell(runs.map((r) => r.ms), 1)} | ${cell(runs.map((r) => r.welcomeMs), 1)} | ${ratio(median(runs.map((r) => r.ms)), base)} |`)
  }
}

console.log(`\nTotal time: ${Math.round((Date.now() - startedAt) / 1000)} s; load average (1 min) ${Math.min(...loads).toFixed(2)}–${Math.max(...loads).toFixed(2)} over the run.`)
