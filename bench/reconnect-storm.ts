/**
 * The reconnect storm of the client library: 5 000 StabilizedWebSocket clients (one child
 * process) hold sessions on a server process that restarts gracefully with default options;
 * how long until every client is back, how many handshakes failed, and how the returns spread
 * over time. Run: npx tsx bench/reconnect-storm.ts [clients=5000] [runs=3]
 * Method and caveats: bench/README.md; the fixture: test/fixtures/reconnect-storm.ts.
 */
import os from 'node:os'
import { reconnectStorm, type StormResult } from '../test/fixtures/reconnect-storm.js'

const clients = Number(process.argv[2] ?? 5000)
const runs = Number(process.argv[3] ?? 3)
const secrets = ['bench-reconnect-storm-secret-of-at-least-32-bytes']

const results: StormResult[] = []
for (let run = 0; run < runs; run++) results.push(await reconnectStorm(clients, { secrets }))

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
const cell = (pick: (r: StormResult) => number, digits = 0): string => {
  const values = results.map(pick)
  return `${median(values).toFixed(digits)} (${Math.min(...values).toFixed(digits)}–${Math.max(...values).toFixed(digits)})`
}

console.log(`## Reconnect storm: ${clients} clients, graceful restart, default options\n`)
console.log(`Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, Node ${process.version}. ${runs} runs; cells are medians (min–max); times from the old server's SIGTERM.\n`)
console.log('| figure | value |')
console.log('| --- | --- |')
console.log(`| every client back (ms) | ${cell((r) => r.arrivals.at(-1) ?? Number.NaN)} |`)
console.log(`| first client back (ms) | ${cell((r) => r.arrivals[0] ?? Number.NaN)} |`)
console.log(`| half the clients back (ms) | ${cell((r) => r.arrivals[Math.floor(r.arrivals.length / 2)] ?? Number.NaN)} |`)
console.log(`| clients back | ${cell((r) => r.reconnected)} of ${clients} |`)
console.log(`| failed handshakes | ${cell((r) => r.failureCount)} |`)
console.log(`| upgrades refused (old server draining / replacement) | ${cell((r) => r.refusedByOldServer)} / ${cell((r) => r.refusedByReplacement)} |`)
console.log(`| old server's drain (ms) | ${cell((r) => r.drainMs)} |`)
console.log(`| replacement listening (ms) | ${cell((r) => r.replacementListeningMs)} |`)
console.log(`| replacement's longest event-loop delay (ms) | ${cell((r) => r.replacementMaxLagMs, 1)} |`)
console.log(`| hinted delays (ms) | ${Math.min(...results.map((r) => r.hints.min))}–${Math.max(...results.map((r) => r.hints.max))} |`)

const shown = results.find((r) => r.arrivals.at(-1) === median(results.map((x) => x.arrivals.at(-1) ?? Number.NaN))) ?? results[0]
console.log('\nReturns per 100 ms window (the median run), from SIGTERM:\n')
console.log('| window (ms) | clients back |')
console.log('| --- | --- |')
shown.perWindow.forEach((count, window) => { if (count > 0) console.log(`| ${window * 100}–${window * 100 + 99} | ${count} |`) })
const busy = shown.perWindow.filter((count) => count > 0)
console.log(`\nBusiest window: ${Math.max(...busy)} clients; ${busy.length} windows with returns; mean over them ${(shown.reconnected / busy.length).toFixed(0)}.`)
