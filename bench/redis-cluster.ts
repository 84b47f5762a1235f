/**
 * Cross-instance fan-out through the Redis adapter: a 3-master Redis Cluster (sharded pub/sub)
 * against a single Redis, alternating within every round of one run. Each side gets the same
 * instances (adapters, one process) following the same streams; publishers spread messages
 * over the streams. Reports messages/s until every instance delivered every message, the
 * publish round trip (p50/p99), and the cluster/single ratios. See bench/README.md.
 *
 * Run: `npx tsx bench/redis-cluster.ts [rounds=3] [messages=4000]`; `--quick` for a smoke run.
 */
import os from 'node:os'
import { randomUUID } from 'node:crypto'
import { Cluster } from 'ioredis'
import { redisAdapter } from '../lib/adapter/redis.js'
import type { StabilizerAdapter } from '../lib/adapter/adapter.js'
import { startRedisServer } from '../test/fixtures/redis-server.js'
import { startRedisCluster } from '../test/fixtures/redis-cluster.js'

const quick = process.argv.includes('--quick')
const numbers = process.argv.slice(2).filter((arg) => /^\d+$/.test(arg)).map(Number)
const rounds = quick ? 1 : numbers[0] ?? 3
const messages = quick ? 200 : numbers[1] ?? 4000
const instances = 4
const streams = Array.from({ length: 32 }, (_, i) => `g:room-${i}`)
/** Publishes in flight at once, over all publishers. */
const inFlight = 64
const payload = Buffer.from(JSON.stringify('x'.repeat(100)))

interface Side { name: string, make: (keyPrefix: string) => StabilizerAdapter }
interface Result { rate: number, p50: number, p99: number }

function quantile (sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

async function runOnce (side: Side): Promise<Result> {
  const keyPrefix = `bench-${randomUUID()}:`
  const adapters = Array.from({ length: instances }, () => side.make(keyPrefix))
  const delivered = new Array<number>(instances).fill(0)
  const limits = { maxEntries: 1000, maxBytes: 1 << 20, retentionMs: 60_000, maxSessions: 1000 }
  let done: () => void = () => {}
  const all = new Promise<void>((resolve) => { done = resolve })
  const target = messages
  for (const [i, adapter] of adapters.entries()) {
    await adapter.start({
      instanceId: randomUUID(),
      limits,
      connectionCount: () => 0,
      handlers: {
        deliver: () => {
          if (++delivered[i] === target && delivered.every((n) => n >= target)) done()
        },
        replaced: () => {},
        disconnect: () => {}
      }
    })
    for (const stream of streams) adapter.subscribe(stream)
    for (const stream of streams) await adapter.top(stream)
  }
  const latencies: number[] = []
  let next = 0
  const started = process.hrtime.bigint()
  await Promise.all(Array.from({ length: inFlight }, async (_, worker) => {
    const publisher = adapters[worker % instances]
    while (next < messages) {
      const n = next++
      const t0 = process.hrtime.bigint()
      await publisher.publish(streams[n % streams.length], { payload, binary: false })
      latencies.push(Number(process.hrtime.bigint() - t0) / 1e6)
    }
  }))
  await all
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  await Promise.all(adapters.map(async (adapter) => { await adapter.stop() }))
  latencies.sort((a, b) => a - b)
  return { rate: messages / seconds, p50: quantile(latencies, 0.5), p99: quantile(latencies, 0.99) }
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}

const single = await startRedisServer()
const cluster = await startRedisCluster({ masters: 3 })
const clients: Cluster[] = []
try {
  const sides: Side[] = [
    { name: 'single Redis', make: (keyPrefix) => redisAdapter({ redis: single.url, keyPrefix }) },
    {
      name: '3-master Cluster',
      make: (keyPrefix) => {
        const client = new Cluster(cluster.startupNodes)
        client.on('error', () => {})
        clients.push(client)
        return redisAdapter({ redis: client, keyPrefix })
      }
    }
  ]
  const results = new Map<string, Result[]>(sides.map((side) => [side.name, []]))
  for (let round = 0; round < rounds; round++) {
    // Alternate which side goes first, so that neither always runs on a warmer machine.
    for (const side of round % 2 === 0 ? sides : [...sides].reverse()) {
      results.get(side.name)!.push(await runOnce(side))
    }
  }
  const summary = (name: string): Result => {
    const list = results.get(name)!
    return { rate: median(list.map((r) => r.rate)), p50: median(list.map((r) => r.p50)), p99: median(list.map((r) => r.p99)) }
  }
  const one = summary('single Redis')
  const sharded = summary('3-master Cluster')
  const range = (name: string, key: keyof Result): string => {
    const values = results.get(name)!.map((r) => r[key])
    return `${Math.min(...values).toFixed(key === 'rate' ? 0 : 2)}–${Math.max(...values).toFixed(key === 'rate' ? 0 : 2)}`
  }
  console.log(`${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, Node ${process.version}, ${rounds} round(s), ${messages} messages over ${streams.length} streams, ${instances} instances, ${inFlight} publishes in flight`)
  console.log('| measure | single Redis | 3-master Cluster | cluster / single |')
  console.log('| --- | --- | --- | --- |')
  console.log(`| messages/s, every instance delivered | ${one.rate.toFixed(0)} (${range('single Redis', 'rate')}) | ${sharded.rate.toFixed(0)} (${range('3-master Cluster', 'rate')}) | ${(sharded.rate / one.rate).toFixed(2)}× |`)
  console.log(`| publish round trip p50 (ms) | ${one.p50.toFixed(2)} (${range('single Redis', 'p50')}) | ${sharded.p50.toFixed(2)} (${range('3-master Cluster', 'p50')}) | ${(sharded.p50 / one.p50).toFixed(2)}× |`)
  console.log(`| publish round trip p99 (ms) | ${one.p99.toFixed(2)} (${range('single Redis', 'p99')}) | ${sharded.p99.toFixed(2)} (${range('3-master Cluster', 'p99')}) | ${(sharded.p99 / one.p99).toFixed(2)}× |`)
} finally {
  for (const client of clients) client.disconnect()
  await single.stop()
  await cluster.stop()
}
