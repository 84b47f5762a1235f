import t from 'tap'
import { randomUUID } from 'node:crypto'
import { redisAdapter } from '../lib/adapter/redis.js'
import { scrape, type Scrape } from './fixtures/prometheus.js'
import { startRedisServer } from './fixtures/redis-server.js'
import { buildApp, httpUrl, listen, openClient, waitFor } from './fixtures/server.js'

// The adapter series as the real Redis adapter drives them: a private redis-server on a free
// port, killed and restarted on the same port, scraped over a real socket.

const p = 'websocket_stabilizer_'

/** Scrapes until `condition` holds (a hang guard, not a timing assertion); resolves with that scrape. */
async function scrapeUntil (url: string, condition: (s: Scrape) => boolean, what: string, timeoutMs = 20_000): Promise<Scrape> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const s = await scrape(url)
    if (condition(s)) return s
    if (Date.now() > deadline) throw new Error(`waited in vain for ${what}; last scrape:\n${s.text.split('\n').filter((line) => line.includes('adapter_')).join('\n')}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

void t.test('the Redis adapter: connected from the start, publishes timed, failures counted, the outage and the recovery seen', async (t) => {
  const redis = await startRedisServer()
  t.teardown(redis.stop)
  const app = await buildApp({
    metrics: true,
    heartbeatInterval: 0,
    adapter: redisAdapter({ redis: redis.url, keyPrefix: `m-${randomUUID()}:`, instanceTtl: 1500, commandTimeout: 500 })
  })
  t.teardown(async () => { await app.close() })
  const url = await listen(app)
  const metricsUrl = `${httpUrl(url)}/metrics`

  let s = await scrape(metricsUrl)
  t.equal(s.value(`${p}adapter_connected`), 1, 'a started Redis adapter reaches its store before any outage was reported')
  t.equal(s.value(`${p}adapter_publish_duration_seconds_count`), 0)
  t.equal(s.value(`${p}adapter_publish_errors_total`), 0)

  const client = await openClient(`${url}/ws/reader`)
  t.teardown(() => { client.terminate() })
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  let received = 0
  client.on('message', () => { received++ })
  for (let i = 0; i < 5; i++) t.equal((await app.stabilizer.broadcast(`b${i}`)).published, true)
  t.equal(await app.stabilizer.sendToClient('reader', 'direct'), true)
  await waitFor(() => received === 6)
  s = await scrape(metricsUrl)
  t.equal(s.value(`${p}adapter_publish_duration_seconds_count`), 5, 'each broadcast is one publish through Redis; a direct send to a plain client here is written, not published')
  t.equal(s.value(`${p}adapter_publish_duration_seconds_bucket`, { le: '+Inf' }), 5)
  t.ok((s.value(`${p}adapter_publish_duration_seconds_sum`) ?? 0) > 0, 'a round trip to Redis takes time')
  t.equal(s.value(`${p}adapter_publish_errors_total`), 0)

  await redis.kill()
  s = await scrapeUntil(metricsUrl, (now) => now.value(`${p}adapter_connected`) === 0, 'adapter_connected 0 after the kill')
  t.equal(s.value(`${p}adapter_connected`), 0, 'the outage is seen')
  const failed = await app.stabilizer.broadcast('while down')
  t.equal(failed.published, false, 'not published: Redis is down')
  t.equal(failed.sent, 1, 'the local client still got it')
  s = await scrape(metricsUrl)
  t.equal(s.value(`${p}adapter_publish_errors_total`), 1, 'the failed publish is counted')
  t.equal(s.value(`${p}adapter_publish_duration_seconds_count`), 5, 'and not timed')

  await redis.restart()
  s = await scrapeUntil(metricsUrl, (now) => now.value(`${p}adapter_connected`) === 1, 'adapter_connected 1 after the restart')
  t.equal(s.value(`${p}adapter_connected`), 1, 'the recovery is seen')
  // The first publishes after a restart may still race the adapter's reconnection: wait for one through.
  const deadline = Date.now() + 20_000
  let attempts = 0
  let published = false
  while (!published && Date.now() < deadline) {
    attempts++
    published = (await app.stabilizer.broadcast('back')).published
  }
  t.ok(published, 'publishes go through again')
  s = await scrape(metricsUrl)
  t.equal(s.value(`${p}adapter_publish_duration_seconds_count`), 6, 'the publish after the restart is timed')
  t.equal(s.value(`${p}adapter_publish_errors_total`), 1 + attempts - 1, 'every other publish was counted as failed, once')
})
