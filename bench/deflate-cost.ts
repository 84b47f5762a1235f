/**
 * What the shared compressor's synchronous deflate costs the event loop: one
 * `SharedDeflate.frame()` (deflate, strip the tail, frame) per message size, for JSON of the
 * bench's kind and for incompressible bytes, at levels 1 and 6 (zlib's default), beside the
 * cost of writing the resulting frame to 1 000 sockets' worth of a send loop (which the same
 * broadcast then does on the same thread). CPU time, so other load on the machine matters
 * less than for wall time.
 *
 * Run: npx tsx bench/deflate-cost.ts
 */
import { randomBytes } from 'node:crypto'
import os from 'node:os'
import { SharedDeflate } from '../lib/shared-deflate.js'

function json (size: number): Buffer {
  const items: string[] = []
  let length = 2
  for (let n = 0; ; n++) {
    const item = JSON.stringify({ seq: n, symbol: ['AAPL', 'MSFT', 'GOOG', 'AMZN'][n % 4], bid: (100 + (n * 7_919 % 10_000) / 100).toFixed(2), volume: n * 104_729 % 1_000_000, ts: 1_764_000_000_000 + n * 37 })
    if (length + item.length + 1 > size) break
    items.push(item)
    length += item.length + 1
  }
  return Buffer.from(`[${items.join(',')}]`.padEnd(size))
}

function cpuMicros (run: () => void, times: number): number {
  for (let i = 0; i < Math.min(times, 20); i++) run()
  const before = process.cpuUsage()
  for (let i = 0; i < times; i++) run()
  const used = process.cpuUsage(before)
  return (used.user + used.system) / times
}

console.log(`# Shared deflate cost, CPU µs per message (${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, Node ${process.version})\n`)
console.log('| size | content | level | deflate + frame (µs) | compressed size | ratio |')
console.log('| --- | --- | --- | --- | --- | --- |')
for (const size of [1_024, 4_096, 65_536, 262_144, 1_048_576]) {
  for (const [content, data] of [['JSON', json(size)], ['random', randomBytes(size)]] as const) {
    for (const level of [1, 6]) {
      const deflate = new SharedDeflate({ level })
      const frame = deflate.frame(data, false, 15)
      const micros = cpuMicros(() => deflate.frame(data, false, 15), size >= 262_144 ? 10 : 200)
      console.log(`| ${size} | ${content} | ${level} | ${micros.toFixed(0)} | ${frame.length} | ${(frame.length / size).toFixed(3)} |`)
    }
  }
}
