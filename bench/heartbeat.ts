/**
 * Heartbeat cost, side by side in one interleaved run: the stabilizer's timing wheel against
 * ws's README heartbeat (one sweep over every client per interval) on a raw ws server and on raw
 * @fastify/websocket (the stabilizer's own stack).
 * - CPU per ping/pong: server CPU time over a window / pongs received in it;
 * - longest event-loop stall in a second window (monitorEventLoopDelay, 1 ms resolution: its
 *   timer would wake the loop 1 000 times a second, so it stays off while CPU is measured), and
 *   the stabilizer's longest tick in it, whole and with the GC pauses within it taken out (with
 *   the process's CPU time over that whole tick, GC pauses included: less than its length when
 *   the thread was descheduled; and its pings),
 *   and the 99th percentile of ticks so measured; the longest ping batch, first turn to last;
 * - each round's CPU per ping/pong with the machine's steal time over its windows;
 * - where `perf` works: loop wake-ups per second and reads/writes per ping/pong (kernel
 *   tracepoints), and instructions per ping/pong (hardware counters, where the machine has them).
 * Server and clients run in separate processes; the controller talks to the server over its
 * stdin/stdout only. Servers run with V8's memory reducer off (see `measure`).
 * Run: npx tsx bench/heartbeat.ts [connections=10000,18000] [rounds=3] [intervalMs=1000] [cpuWindows=1]
 * A 50k point needs an open-file limit above 50k for one process; where the hard limit is
 * lower (`ulimit -Hn`), the 50k row measures the scheduler alone (no sockets), see below.
 */
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import { startClientProcess, killProcess } from '../test/fixtures/processes.js'
import { perfStat } from './perf-stat.js'

const sizes = (process.argv[2] ?? '10000,18000').split(',').map(Number)
const rounds = Number(process.argv[3] ?? 3)
/** 1 s by default: 25× the default rate, so a few seconds hold many pings. */
const interval = Number(process.argv[4] ?? 1000)
/** Five intervals, or one when an interval is long (every connection is pinged once in it). */
const windowMs = interval >= 5000 ? interval : 5 * interval
/**
 * The CPU window spans this many windows (the stall window stays one): at the default interval a
 * window holds one ping per connection, and single rounds moved by ±20 % (bench/README.md).
 */
const cpuWindows = Number(process.argv[5] ?? 1)
const cpuWindowMs = cpuWindows * windowMs
const root = fileURLToPath(new URL('..', import.meta.url))
const pinned = process.env.HEARTBEAT_PIN === '1' && os.cpus().length > 1

interface Result extends PerfCounts { cpuMicros: number, userMicros: number, systemMicros: number, pongs: number, maxStallMs: number, longestTickMs: number | null, tickWithoutGcMs: number | null, tickWithoutGcCpuMs: number | null, tickWithoutGcPings: number | null, tickP99WithoutGcMs: number | null, batchMs: number | null, batchPings: number | null, stealMs: number, connections: number }

/**
 * Counts over the window from `perf stat -p <server>`, NaN where perf or a counter is not there:
 * - instructions retired (user, kernel): unlike CPU time they hardly move when the machine is
 *   shared and noisy; they need hardware counters, which many virtual machines do not expose;
 * - system calls, from the kernel's tracepoints (no hardware needed): `epoll_pwait` is one
 *   wake-up of the event loop; read, write and writev move the frames.
 */
const perfEvents = {
  userInstructions: 'instructions:u',
  kernelInstructions: 'instructions:k',
  wakeups: 'syscalls:sys_enter_epoll_pwait',
  reads: 'syscalls:sys_enter_read',
  writes: 'syscalls:sys_enter_write',
  writevs: 'syscalls:sys_enter_writev'
} as const
type PerfCounts = Record<keyof typeof perfEvents, number>
async function countEvents (pid: number, seconds: number): Promise<PerfCounts> {
  const counts = await perfStat(pid, seconds, Object.values(perfEvents))
  return Object.fromEntries(Object.entries(perfEvents).map(([key, event]) => [key, counts[event]])) as PerfCounts
}

/**
 * The machine's steal time so far, in ms (all CPUs): time the hypervisor ran something else while
 * this virtual machine had work. Read around each window, it tells a round taken on a shared host
 * in a busy moment from one that measured the code (a run of the seventh session showed a 754 ms
 * stall in two contenders' windows while the machine's steal counter went from 11 s to 557 s).
 * NaN where /proc/stat has no such field.
 */
function stealMs (): number {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/)
    return Number(fields[8]) * 1000 / 100 // USER_HZ: 100 on Linux
  } catch {
    return Number.NaN
  }
}

async function measure (contender: string, connections: number): Promise<Result> {
  // --no-memory-reducer: after the full GC below, V8's memory reducer would run more full GCs of
  // an idle heap in the following seconds, landing in the windows at random (measured, 10k idle
  // connections, heartbeats off: 330 loop wake-ups and 18 ms of CPU a second with it, none
  // without), as much as the heartbeat's own cost at the default interval.
  const server = spawn(process.execPath, ['--no-memory-reducer', '--expose-gc', '--import', 'tsx', 'bench/heartbeat-server.ts', contender, String(interval)], { cwd: root, stdio: ['pipe', 'pipe', 'inherit'] })
  const lines = createInterface({ input: server.stdout })[Symbol.asyncIterator]()
  const next = async (): Promise<Record<string, number>> => JSON.parse((await lines.next()).value as string) as Record<string, number>
  try {
    const { port } = await next()
    const clients = []
    for (let left = connections; left > 0; left -= 9000) clients.push(await startClientProcess(`ws://127.0.0.1:${port}/ws`, Math.min(9000, left)))
    // HEARTBEAT_PIN=1: the server on the first CPU, the clients on the others (every thread), so
    // that clients woken by a turn's pings do not take the server's CPU in the middle of a tick.
    if (pinned) {
      const pins = [spawnSync('taskset', ['-a', '-p', '-c', '0', String(server.pid)])]
      for (const client of clients) pins.push(spawnSync('taskset', ['-a', '-p', '-c', `1-${os.cpus().length - 1}`, String(client.pid)]))
      const failed = pins.find((pin) => pin.status !== 0)
      if (failed !== undefined) throw new Error(`HEARTBEAT_PIN: taskset failed: ${failed.error?.message ?? failed.stderr.toString()}`)
    }
    // Let every connection have had its first ping (jittered over [interval/2, interval]).
    await new Promise((resolve) => setTimeout(resolve, interval + 2000))
    server.stdin.write('gc\n')
    await next()
    // Two windows: CPU and system calls without the stall monitor (its 1 ms timer would wake the
    // loop and batch the pongs for it), then the longest stall and tick with it.
    const counts = countEvents(server.pid!, cpuWindowMs / 1000)
    const stealBefore = stealMs()
    server.stdin.write(`measure ${cpuWindowMs} cpu\n`)
    const result = { ...await next(), ...await counts } as unknown as Result
    server.stdin.write(`measure ${windowMs}\n`)
    const stall = await next()
    result.stealMs = stealMs() - stealBefore
    result.maxStallMs = stall.maxStallMs
    result.longestTickMs = stall.longestTickMs
    result.tickWithoutGcMs = stall.tickWithoutGcMs
    result.tickWithoutGcCpuMs = stall.tickWithoutGcCpuMs
    result.tickWithoutGcPings = stall.tickWithoutGcPings
    result.tickP99WithoutGcMs = stall.tickP99WithoutGcMs
    result.batchMs = stall.batchMs
    result.batchPings = stall.batchPings
    for (const client of clients) await killProcess(client)
    return result
  } finally {
    server.stdin.end()
    if (server.exitCode === null) await once(server, 'exit')
  }
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]

console.log(`# heartbeat cost — ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, Node ${process.version}, interval ${interval} ms, window ${windowMs} ms (CPU: ${cpuWindowMs} ms), ${rounds} interleaved rounds, medians${pinned ? ', server on CPU 0 and clients on the others' : ''}\n`)
console.log('| connections | contender | CPU µs per ping/pong | ratio vs ws sweep | of which user / system µs | CPU ms per second | instructions per ping/pong, user + kernel | ratio vs ws sweep | loop wake-ups per second | reads / writes per ping/pong | longest loop stall (ms) | longest heartbeat tick (ms) | without the GC pauses within it: longest (process CPU over the whole tick, GC included; its pings) / p99 (ms) | longest ping batch, first turn to last (ms; its pings) | pongs in window |')
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
/** Each round's figure, so that a round taken while the host was busy (steal time) shows. */
const roundLines: string[] = []
for (const size of sizes) {
  const contenders = ['stabilizer', 'ws-sweep', 'fastify-sweep', 'heartbeat-off']
  const runs: Record<string, Result[]> = Object.fromEntries(contenders.map((name) => [name, []]))
  for (let round = 0; round < rounds; round++) {
    for (const contender of round % 2 === 0 ? contenders : [...contenders].reverse()) runs[contender].push(await measure(contender, size))
  }
  const perPong = (r: Result): number => r.cpuMicros / Math.max(1, r.pongs)
  const sweep = median(runs['ws-sweep'].map(perPong))
  const roundFigure = (contender: string, r: Result): string => {
    const cpu = contender === 'heartbeat-off' ? `${(r.cpuMicros / cpuWindowMs).toFixed(1)} ms/s` : perPong(r).toFixed(2)
    return `${cpu} (${Number.isNaN(r.stealMs) ? 'n/a' : r.stealMs.toFixed(0)})`
  }
  roundLines.push(`- ${size}: ${contenders.map((contender) => `${contender} ${runs[contender].map((r) => roundFigure(contender, r)).join(', ')}`).join('; ')}`)
  const instructionsPerPong = (r: Result): number => (r.userInstructions + r.kernelInstructions) / Math.max(1, r.pongs)
  const sweepInstructions = median(runs['ws-sweep'].map(instructionsPerPong))
  const perPongOf = (contender: string, count: (r: Result) => number): number => median(runs[contender].map((r) => count(r) / Math.max(1, r.pongs)))
  // Loop wake-ups (epoll_pwait calls) per second, in the window without the stall monitor.
  const shown = (value: number, digits: number): string => Number.isNaN(value) ? 'n/a' : value.toFixed(digits)
  const wakeupsPerSecondOf = (contender: string): string => shown(median(runs[contender].map((r) => r.wakeups / (cpuWindowMs / 1000))), 0)
  // The whole process's CPU per second of the window: heartbeat-off gives the floor of an idle
  // server of the stabilizer's stack.
  const cpuPerSecondOf = (contender: string): string => median(runs[contender].map((r) => r.cpuMicros / cpuWindowMs)).toFixed(1)
  const stall = (contender: string): string => median(runs[contender].map((r) => r.maxStallMs)).toFixed(1)
  console.log(`| ${size} | heartbeat-off | — | — | — | ${cpuPerSecondOf('heartbeat-off')} | — | — | ${wakeupsPerSecondOf('heartbeat-off')} | — | ${stall('heartbeat-off')} | (no heartbeat: the loop's own stalls, GC included) | — | — | 0 |`)
  for (const contender of ['stabilizer', 'ws-sweep', 'fastify-sweep']) {
    const cpu = median(runs[contender].map(perPong))
    const user = median(runs[contender].map((r) => r.userMicros / Math.max(1, r.pongs)))
    const system = median(runs[contender].map((r) => r.systemMicros / Math.max(1, r.pongs)))
    const tickFigure = (pick: (r: Result) => number | null): number => median(runs[contender].map((r) => pick(r) ?? 0))
    const tick = contender === 'stabilizer' ? tickFigure((r) => r.longestTickMs).toFixed(1) : '(the sweep is one tick: see the stall)'
    const batch = contender === 'stabilizer' ? `${tickFigure((r) => r.batchMs).toFixed(1)} (${tickFigure((r) => r.batchPings)})` : '—'
    const ownTick = contender === 'stabilizer' ? `${tickFigure((r) => r.tickWithoutGcMs).toFixed(1)} (${tickFigure((r) => r.tickWithoutGcCpuMs).toFixed(1)}, ${tickFigure((r) => r.tickWithoutGcPings)}) / ${tickFigure((r) => r.tickP99WithoutGcMs).toFixed(2)}` : '—'
    const instructions = median(runs[contender].map(instructionsPerPong))
    const split = `${(median(runs[contender].map((r) => r.userInstructions / Math.max(1, r.pongs))) / 1000).toFixed(1)}k + ${(median(runs[contender].map((r) => r.kernelInstructions / Math.max(1, r.pongs))) / 1000).toFixed(1)}k`
    console.log(`| ${size} | ${contender} | ${cpu.toFixed(2)} | ${(cpu / sweep).toFixed(2)}× | ${user.toFixed(2)} / ${system.toFixed(2)} | ${cpuPerSecondOf(contender)} | ${Number.isNaN(instructions) ? 'n/a (no hardware counters)' : split} | ${Number.isNaN(instructions) ? 'n/a' : `${(instructions / sweepInstructions).toFixed(2)}×`} | ${wakeupsPerSecondOf(contender)} | ${shown(perPongOf(contender, (r) => r.reads), 2)} / ${shown(perPongOf(contender, (r) => r.writes + r.writevs), 2)} | ${stall(contender)} | ${tick} | ${ownTick} | ${batch} | ${median(runs[contender].map((r) => r.pongs))} |`)
  }
}

console.log('\nRounds: CPU µs per ping/pong (heartbeat-off: ms of CPU per second), and in brackets the machine\'s steal time over the round\'s two windows in ms (time the hypervisor gave this VM\'s CPUs to others):')
for (const line of roundLines) console.log(line)

// 50k: the scheduler's own cost, without sockets, in its own process (bench/heartbeat-scheduler.ts).
const fake = 50_000
const alone = JSON.parse(spawnSync(process.execPath, ['--no-memory-reducer', '--expose-gc', '--import', 'tsx', 'bench/heartbeat-scheduler.ts', String(fake), String(interval)], { cwd: root, encoding: 'utf8' }).stdout) as Record<string, number>
console.log(`\n${fake} connections, scheduler alone (no sockets: the per-socket ping write is the same for both contenders and is measured above): ${alone.cpuMicrosPerPong.toFixed(2)} µs CPU per ping/pong of scheduling; ticks p50 ${alone.tickP50Ms.toFixed(2)} ms, p99 ${alone.tickP99Ms.toFixed(2)} ms, longest ${alone.longestTickMs.toFixed(2)} ms (${alone.pingsInLongestTick} pings); without the GC pauses within them p99 ${alone.tickWithoutGcP99Ms.toFixed(2)} ms, longest ${alone.longestTickWithoutGcMs.toFixed(2)} ms (${alone.pingsInLongestTickWithoutGc} pings, ${alone.longestTickWithoutGcCpuMs.toFixed(2)} ms of the process's CPU over it, all threads: below its length, the thread was descheduled); ${alone.pongs} pongs in ${alone.windowMs} ms.`)
