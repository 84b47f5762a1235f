// `perf stat` of one process over a window, shared by the heartbeat benchmarks.
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'

/** Whether `perf` is installed and may read the kernel's system-call tracepoints here. */
export const perfWorks = spawnSync('perf', ['stat', '-x,', '-e', 'syscalls:sys_enter_epoll_pwait', 'true'], { encoding: 'utf8' }).stderr?.includes('syscalls:sys_enter_epoll_pwait') === true

/**
 * Counts `events` (perf's names: tracepoints, hardware counters) in process `pid` over
 * `seconds`; resolves with each event's count, NaN where perf does not work here or the event
 * is not supported (a "<not supported>" counter).
 */
export async function perfStat (pid: number, seconds: number, events: readonly string[]): Promise<Record<string, number>> {
  const counts: Record<string, number> = Object.fromEntries(events.map((event) => [event, Number.NaN]))
  if (!perfWorks) return counts
  const perf = spawn('perf', ['stat', '-x,', '-e', events.join(','), '-p', String(pid), '--', 'sleep', String(seconds)], { stdio: ['ignore', 'ignore', 'pipe'] })
  let output = ''
  perf.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  await once(perf, 'close')
  for (const line of output.split('\n')) {
    const [value, , event] = line.split(',')
    if (event !== undefined && event in counts) counts[event] = Number(value)
  }
  return counts
}
