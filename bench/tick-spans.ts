// The heartbeat benchmarks' tick records: each tick of the scheduler as four numbers in a flat
// array (start and end in ms, the process's CPU time in it in µs, the pings it sent), and the
// main thread's GC pauses as start/end pairs ('gc' performance entries).

/**
 * Ticks once the GC pauses that fell within them are taken out: the scheduler's own work (and
 * any time the thread was not running). `pauses` are the main thread's GC pauses ('gc'
 * performance entries), as start/end pairs. Returns the longest such tick, the process's CPU
 * time over its whole span, GC pauses included (below the span: the thread was descheduled),
 * and its pings, and the 99th percentile.
 */
export function ticksWithoutGc (spans: readonly number[], pauses: readonly number[]): { longestMs: number, longestCpuMs: number, longestPings: number, p99Ms: number } {
  const owns: number[] = []
  let longest = { ms: 0, cpuMs: 0, pings: 0 }
  for (let i = 0; i < spans.length; i += 4) {
    let own = spans[i + 1] - spans[i]
    for (let j = 0; j < pauses.length; j += 2) own -= Math.max(0, Math.min(spans[i + 1], pauses[j + 1]) - Math.max(spans[i], pauses[j]))
    owns.push(own)
    if (own > longest.ms) longest = { ms: own, cpuMs: spans[i + 2] / 1000, pings: spans[i + 3] }
  }
  owns.sort((a, b) => a - b)
  return { longestMs: longest.ms, longestCpuMs: longest.cpuMs, longestPings: longest.pings, p99Ms: owns[Math.min(owns.length - 1, Math.floor(owns.length * 0.99))] ?? 0 }
}
/**
 * The longest ping batch: a run of ticks that sent pings, each starting less than `gapMs` after
 * the one before ended (a batch's turns follow each other within a turn of the loop; batches
 * are a quarter interval apart). Returns the time from its first turn's start to its last
 * turn's end and its pings: how long the last ping of a batch waits for its turn.
 */
export function longestBatch (spans: readonly number[], gapMs: number): { ms: number, pings: number } {
  let longest = { ms: 0, pings: 0 }
  let start = Number.NaN
  let end = Number.NEGATIVE_INFINITY
  let pings = 0
  for (let i = 0; i < spans.length; i += 4) {
    if (spans[i + 3] === 0) continue
    if (spans[i] - end >= gapMs) {
      start = spans[i]
      pings = 0
    }
    end = spans[i + 1]
    pings += spans[i + 3]
    if (end - start > longest.ms) longest = { ms: end - start, pings }
  }
  return longest
}
