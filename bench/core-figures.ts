/**
 * Figures for the plugin core (not a timed test):
 * 1. the longest event-loop stall and the completion time of one broadcast to N clients,
 *    for several `maxConcurrentBroadcast` values;
 * 2. the time `app.close()` takes with M healthy clients and one SIGSTOPped peer.
 * Clients live in a separate process. Run: npx tsx bench/core-figures.ts [N=10000] [M=1000]
 */
import Fastify from 'fastify'
import os from 'node:os'
import stabilizer from '../lib/index.js'
import { startClientProcess, killProcess } from '../test/fixtures/processes.js'

const recipients = Number(process.argv[2] ?? 10_000)
const shutdownClients = Number(process.argv[3] ?? 1_000)

async function serve (options: Parameters<typeof stabilizer>[1]) {
  const app = Fastify()
  await app.register(stabilizer, { maxConnections: 100_000, ...options })
  app.get('/ws', { websocket: true }, () => {})
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  return { app, url: `ws://127.0.0.1:${port}/ws` }
}

async function waitCount (app: { stabilizer: { getConnectionCount: () => number } }, n: number): Promise<void> {
  while (app.stabilizer.getConnectionCount() < n) await new Promise((resolve) => setTimeout(resolve, 20))
}

console.log(`# machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, Node ${process.version}`)
console.log(`\n## broadcast of 100 bytes to ${recipients} clients (median of 20 broadcasts each)\n`)
console.log('| maxConcurrentBroadcast | completion p50 (ms) | longest stall p50 (ms) | longest stall max (ms) |')
console.log('| --- | --- | --- | --- |')
for (const perTurn of [recipients, 1_000, 250]) {
  const { app, url } = await serve({ maxConcurrentBroadcast: perTurn })
  const clients = await startClientProcess(url, recipients)
  await waitCount(app, recipients)
  const message = 'x'.repeat(100)
  const completions: number[] = []
  const stalls: number[] = []
  for (let i = 0; i < 22; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    // A setImmediate chain runs once per loop turn: the longest gap between two of its ticks
    // is the longest time the loop was blocked while the broadcast ran.
    let longest = 0
    let last = performance.now()
    let ticking = true
    const tick = (): void => {
      const now = performance.now()
      longest = Math.max(longest, now - last)
      last = now
      if (ticking) setImmediate(tick)
    }
    setImmediate(tick)
    await new Promise((resolve) => setImmediate(resolve))
    last = performance.now()
    const started = performance.now()
    await app.stabilizer.broadcast(message)
    completions.push(performance.now() - started)
    await new Promise((resolve) => setImmediate(resolve))
    ticking = false
    stalls.push(longest)
  }
  const median = (values: number[]) => [...values].slice(2).sort((a, b) => a - b)[Math.floor((values.length - 2) / 2)]
  console.log(`| ${perTurn === recipients ? `${perTurn} (no yield)` : perTurn} | ${median(completions).toFixed(1)} | ${median(stalls).toFixed(1)} | ${Math.max(...stalls.slice(2)).toFixed(1)} |`)
  await killProcess(clients)
  await app.close()
}

console.log(`\n## app.close() with ${shutdownClients} healthy clients and 1 SIGSTOPped peer\n`)
console.log('| shutdownTimeout (ms) | app.close() (ms) | total | closed gracefully | terminated |')
console.log('| --- | --- | --- | --- | --- |')
for (const deadline of [2_000, undefined]) {
  const { app, url } = await serve(deadline === undefined ? {} : { shutdownTimeout: deadline })
  const healthy = await startClientProcess(url, shutdownClients)
  const frozen = await startClientProcess(url, 1)
  await waitCount(app, shutdownClients + 1)
  frozen.kill('SIGSTOP')
  const started = performance.now()
  await app.close()
  const elapsed = performance.now() - started
  const report = await app.stabilizer.gracefulShutdown()
  console.log(`| ${deadline ?? 'default (9500: pluginTimeout − 500)'} | ${elapsed.toFixed(0)} | ${report.total} | ${report.closedGracefully} | ${report.terminated} |`)
  await killProcess(frozen)
  await killProcess(healthy)
}
