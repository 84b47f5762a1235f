/**
 * Heartbeat cost in counts that do not move with the machine's load: the user-space
 * instructions a server executes per ping/pong, counted by valgrind's callgrind, and the system
 * calls and context switches per ping/pong of the same server run natively. CPU time on a shared
 * 2-core virtual machine moved by ±15 % between two servers running the same code
 * (bench/README.md), more than the differences in question; an instruction count of the same
 * program and input is the same whatever the neighbours do.
 *
 * For each contender (the stabilizer, ws's README sweep, the same sweep on raw
 * @fastify/websocket), in this order:
 * 1. natively: N idle connections, a window of `windows` intervals after `warmIntervals`
 *    intervals of warm-up and a full GC: system calls (`perf stat`, kernel tracepoints: read, write, writev,
 *    epoll_pwait, epoll_ctl) and the main thread's context switches per ping/pong; the
 *    stabilizer's pings per turn;
 * 2. under `valgrind --tool=callgrind --cache-sim=yes` (instrumentation off until the window,
 *    switched on and off with `callgrind_control`): the same window's instructions per
 *    ping/pong, all threads (GC and JIT helpers included), the simulated cache misses (first
 *    level: 32 KiB instructions, 48 KiB data; last level set to 2 MiB, a core's L2: the
 *    machine's reported 304 MiB L3, shared with other tenants, would hold every connection),
 *    callgrind's cycle estimate (instructions + 10 × first-level misses + 100 × last-level
 *    misses), and the pings per turn.
 * Callgrind with the cache simulation runs the server ~60× slower. The stabilizer sends pings
 * for at most 1 ms per turn, so under callgrind a turn would hold a few pings where natively it
 * holds ~120, and the count would charge it for many times the turns a native run takes.
 * `budgetMs` sets the budget under callgrind (`HEARTBEAT_PING_BUDGET_MS`); both runs print
 * their pings per turn so that they can be compared. The kernel's own work (the system calls'
 * instructions) is not in the count: the native row's system calls per ping/pong stand for it.
 *
 * With `HEARTBEAT_CALLGRIND_KEEP=1` each run's callgrind dump is kept (its path is printed) for
 * `callgrind_annotate`: which functions the instructions and misses went to.
 * Run: npx tsx bench/heartbeat-instructions.ts [connections=10000] [intervalMs=25000] [windows=3] [budgetMs=30] [warmIntervals=8]
 * Needs valgrind (callgrind_control) and, for the system calls, perf (Debian: valgrind, linux-perf).
 * Takes ~30 minutes at the defaults.
 */
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync, readdirSync, mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { startClientProcess, killProcess } from '../test/fixtures/processes.js'
import { perfStat } from './perf-stat.js'

const connections = Number(process.argv[2] ?? 10_000)
const interval = Number(process.argv[3] ?? 25_000)
const windows = Number(process.argv[4] ?? 3)
const budgetMs = Number(process.argv[5] ?? 30)
/**
 * A sweep's loop runs once per interval, so its code warms up slowly: after three intervals
 * the ws sweep still spent ~2 000 instructions per ping/pong in V8's compiler and ~900 more
 * elsewhere than after eight (scratch runs, 10k connections, 25 s).
 */
const warmIntervals = Number(process.argv[6] ?? 8)
const windowMs = windows * interval
const root = fileURLToPath(new URL('..', import.meta.url))
const contenders = ['stabilizer', 'ws-sweep', 'fastify-sweep'] as const
const syscalls = ['read', 'write', 'writev', 'epoll_pwait', 'epoll_ctl'] as const

interface Stats { pongs: number, cpuMicros: number, turns?: number, pingsSent?: number }
/** Callgrind's events per ping/pong: Ir (instructions), I1mr/D1mr/D1mw (first-level misses), ILmr/DLmr/DLmw (last-level). */
type Events = Record<string, number>
interface Run { pongs: number, pingsPerTurn: number | null, cpuMicrosPerPong: number, eventsPerPong?: Events, steadyEventsPerPong?: Events, syscallsPerPong?: Record<string, number>, switchesPerPong?: { voluntary: number, involuntary: number } }

for (const tool of ['valgrind', 'callgrind_control']) {
  if (spawnSync(tool, ['--version']).error !== undefined) throw new Error(`${tool} not found (Debian: apt-get install valgrind)`)
}

/** The main thread's voluntary and involuntary context switches so far. */
function switches (pid: number): { voluntary: number, involuntary: number } {
  const status = readFileSync(`/proc/${pid}/task/${pid}/status`, 'utf8')
  return { voluntary: Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1]), involuntary: Number(/^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1]) }
}

/** The server's system calls over `seconds`, by call (NaN without perf). */
async function countSyscalls (pid: number, seconds: number): Promise<Record<string, number>> {
  const counts = await perfStat(pid, seconds, syscalls.map((name) => `syscalls:sys_enter_${name}`))
  return Object.fromEntries(syscalls.map((name) => [name, counts[`syscalls:sys_enter_${name}`]]))
}

/** The "totals:" of every callgrind dump in `dir` (the window's: nothing is counted before it), by event. */
function eventsIn (dir: string): Events {
  const sums: Events = {}
  for (const file of readdirSync(dir).filter((name) => /\.out\.\d+$/.test(name))) {
    const text = readFileSync(join(dir, file), 'utf8')
    const events = /^events: (.+)$/m.exec(text)?.[1].split(' ')
    const totals = /^totals: (.+)$/m.exec(text)?.[1].split(' ').map(Number)
    if (events === undefined || totals === undefined) throw new Error(`no totals in ${file}`)
    events.forEach((event, i) => { sums[event] = (sums[event] ?? 0) + (totals[i] ?? 0) })
  }
  return sums
}

/**
 * The part of the dumps' events spent in V8's optimising compilers (TurboFan, Maglev, Sparkplug),
 * by event: compiling is warm-up, and the window can catch a server still compiling (the
 * sweeps, whose loop runs once per interval, compiled for ~2 000 instructions per ping/pong
 * after three intervals). Sums each function's own cost lines; the lines after a `calls=` line
 * are a callee's inclusive cost and are skipped.
 */
function compilingIn (dir: string): Events {
  const sums: Events = {}
  const compiler = /^v8::internal::(?:compiler|maglev|baseline|turboshaft)::/
  for (const file of readdirSync(dir).filter((name) => /\.out\.\d+$/.test(name))) {
    const text = readFileSync(join(dir, file), 'utf8')
    const events = /^events: (.+)$/m.exec(text)?.[1].split(' ') ?? []
    const names = new Map<string, string>()
    let counting = false
    let skipNext = false
    for (const line of text.split('\n')) {
      const named = /^(c?fn)=\((\d+)\)(?: (.*))?$/.exec(line)
      if (named !== null) {
        if (named[3] !== undefined) names.set(named[2], named[3])
        if (named[1] === 'fn') counting = compiler.test(names.get(named[2]) ?? '')
        continue
      }
      if (line.startsWith('calls=')) {
        skipNext = true
        continue
      }
      if (!/^[\d+\-*]/.test(line)) continue
      if (skipNext) {
        skipNext = false
        continue
      }
      if (!counting) continue
      line.split(' ').slice(1).forEach((value, i) => { sums[events[i]] = (sums[events[i]] ?? 0) + Number(value) })
    }
  }
  return sums
}

/** Callgrind's (and KCachegrind's) cycle estimate: a first-level miss costs 10, a last-level one 100. */
const cycleEstimate = (e: Events): number => e.Ir + 10 * (e.I1mr + e.D1mr + e.D1mw) + 100 * (e.ILmr + e.DLmr + e.DLmw)

async function measure (contender: string, underCallgrind: boolean): Promise<Run> {
  const nodeArgs = ['--no-memory-reducer', '--expose-gc', '--import', 'tsx', 'bench/heartbeat-server.ts', contender, String(interval)]
  const dir = mkdtempSync(join(os.tmpdir(), 'heartbeat-callgrind-'))
  const server = underCallgrind
    ? spawn('valgrind', ['--tool=callgrind', '--cache-sim=yes', '--LL=2097152,16,64', '--instr-atstart=no', `--callgrind-out-file=${join(dir, 'callgrind.out')}`, `--log-file=${join(dir, 'valgrind.log')}`, process.execPath, ...nodeArgs], { cwd: root, stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, HEARTBEAT_PING_BUDGET_MS: String(budgetMs) } })
    : spawn(process.execPath, nodeArgs, { cwd: root, stdio: ['pipe', 'pipe', 'inherit'] })
  const lines = createInterface({ input: server.stdout })[Symbol.asyncIterator]()
  const ask = async <T>(command?: string): Promise<T> => {
    if (command !== undefined) server.stdin.write(`${command}\n`)
    const line = await lines.next()
    if (line.done === true) throw new Error(`${contender}: the server exited`)
    return JSON.parse(line.value as string) as T
  }
  const callgrind = (...args: string[]): void => {
    const run = spawnSync('callgrind_control', [...args, String(server.pid)], { encoding: 'utf8' })
    if (run.status !== 0) throw new Error(`callgrind_control ${args.join(' ')}: ${run.stdout}${run.stderr}`)
  }
  const clients = []
  try {
    const { port } = await ask<{ port: number }>()
    for (let left = connections; left > 0; left -= 9000) {
      clients.push(await startClientProcess(`ws://127.0.0.1:${port}/ws`, Math.min(9000, left), { CONNECT_AT_ONCE: '50' }))
    }
    // Every connection has had its jittered first ping and is on its batch, and the code on the
    // path is optimised. Then a full GC, and time for its sweeping to end (under callgrind it
    // would otherwise land in the window: a fifth of one window's count).
    await new Promise((resolve) => setTimeout(resolve, warmIntervals * interval + 2000))
    await ask('gc')
    await new Promise((resolve) => setTimeout(resolve, 5000))
    if (underCallgrind) callgrind('--instr=on')
    const syscallCounts = underCallgrind ? undefined : countSyscalls(server.pid!, windowMs / 1000)
    const switchesBefore = underCallgrind ? undefined : switches(server.pid!)
    const before = await ask<Stats>('stats')
    await new Promise((resolve) => setTimeout(resolve, windowMs))
    const after = await ask<Stats>('stats')
    const switchesAfter = underCallgrind ? undefined : switches(server.pid!)
    if (underCallgrind) {
      callgrind('--instr=off')
      callgrind('--dump')
    }
    const pongs = after.pongs - before.pongs
    const per = (count: number): number => count / Math.max(1, pongs)
    const turns = (after.turns ?? 0) - (before.turns ?? 0)
    const run: Run = {
      pongs,
      pingsPerTurn: turns > 0 ? ((after.pingsSent ?? 0) - (before.pingsSent ?? 0)) / turns : null,
      cpuMicrosPerPong: per(after.cpuMicros - before.cpuMicros)
    }
    if (underCallgrind) {
      const all = Object.entries(eventsIn(dir))
      const compiling = compilingIn(dir)
      run.eventsPerPong = Object.fromEntries(all.map(([event, count]) => [event, per(count)]))
      run.steadyEventsPerPong = Object.fromEntries(all.map(([event, count]) => [event, per(count - (compiling[event] ?? 0))]))
    } else {
      run.syscallsPerPong = Object.fromEntries(Object.entries(await syscallCounts!).map(([name, count]) => [name, per(count)]))
      run.switchesPerPong = { voluntary: per(switchesAfter!.voluntary - switchesBefore!.voluntary), involuntary: per(switchesAfter!.involuntary - switchesBefore!.involuntary) }
    }
    return run
  } finally {
    for (const client of clients) await killProcess(client)
    server.stdin.end()
    if (server.exitCode === null && server.signalCode === null) await once(server, 'exit')
    if (process.env.HEARTBEAT_CALLGRIND_KEEP === '1' && underCallgrind) console.error(`${contender}: callgrind dump kept in ${dir}`)
    else rmSync(dir, { recursive: true, force: true })
  }
}

console.log(`# heartbeat instructions — ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, Node ${process.version}, ${connections} idle connections, interval ${interval} ms, ${warmIntervals} intervals of warm-up, window ${windowMs} ms, ping budget under callgrind ${budgetMs} ms\n`)
const native: Record<string, Run> = {}
const counted: Record<string, Run> = {}
for (const contender of contenders) {
  native[contender] = await measure(contender, false)
  counted[contender] = await measure(contender, true)
  console.error(`${contender}: ${JSON.stringify({ native: native[contender], callgrind: counted[contender] })}`)
}
for (const contender of contenders) {
  const { pongs } = counted[contender]
  // Each connection answers one ping per interval: a window that held fewer pongs under callgrind
  // than natively is one where the slowed server did not keep up, and its figures say little.
  if (pongs < 0.95 * native[contender].pongs) console.log(`**${contender}: the callgrind window held ${pongs} pongs against ${native[contender].pongs} natively: the server did not keep up under callgrind; take a longer interval or fewer connections.**\n`)
}
const fixed = (value: number | undefined | null, digits: number): string => value === undefined || value === null || Number.isNaN(value) ? 'n/a' : value.toFixed(digits)
/** The figures without compiling: what a server that has warmed up pays for each ping/pong. */
const events = (contender: string): Events => counted[contender].steadyEventsPerPong!
const ratios = (contender: string, figure: (e: Events) => number): string => `${fixed(figure(events(contender)) / figure(events('ws-sweep')), 3)}× / ${fixed(figure(events(contender)) / figure(events('fastify-sweep')), 3)}×`
console.log('Callgrind\'s figures without the instructions and misses in V8\'s compilers (the whole count in brackets):\n')
console.log('| contender | instructions per ping/pong (user space) | vs ws sweep / same-stack sweep | first-level misses per ping/pong: instructions / data read / data write | last-level (2 MiB) misses: instructions / data read / data write | cycle estimate per ping/pong | vs ws sweep / same-stack sweep | pings per turn: native / callgrind | system calls per ping/pong, native: read / write + writev / epoll_pwait / epoll_ctl | context switches per ping/pong, main thread: voluntary / involuntary | CPU µs per ping/pong, native (noisy) | pongs in window: native / callgrind |')
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
for (const contender of contenders) {
  const n = native[contender]
  const e = events(contender)
  const whole = counted[contender].eventsPerPong!
  const calls = n.syscallsPerPong!
  console.log(`| ${contender} | ${fixed(e.Ir, 0)} (${fixed(whole.Ir, 0)}) | ${ratios(contender, (x) => x.Ir)} | ${fixed(e.I1mr, 0)} / ${fixed(e.D1mr, 0)} / ${fixed(e.D1mw, 0)} | ${fixed(e.ILmr, 1)} / ${fixed(e.DLmr, 1)} / ${fixed(e.DLmw, 1)} | ${fixed(cycleEstimate(e), 0)} (${fixed(cycleEstimate(whole), 0)}) | ${ratios(contender, cycleEstimate)} | ${fixed(n.pingsPerTurn, 1)} / ${fixed(counted[contender].pingsPerTurn, 1)} | ${fixed(calls.read, 2)} / ${fixed(calls.write + calls.writev, 2)} / ${fixed(calls.epoll_pwait, 3)} / ${fixed(calls.epoll_ctl, 3)} | ${fixed(n.switchesPerPong!.voluntary, 3)} / ${fixed(n.switchesPerPong!.involuntary, 3)} | ${fixed(n.cpuMicrosPerPong, 2)} | ${n.pongs} / ${counted[contender].pongs} |`)
}
