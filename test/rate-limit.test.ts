import t from 'tap'
import { once } from 'node:events'
import { CloseCode } from '../lib/index.js'
import { InboundBudget, inboundSize } from '../lib/rate-limit.js'
import { buildApp, closeOf, listen, openClient, waitFor, withClients } from './fixtures/server.js'

void t.test('token buckets: one second of rate, continuous refill, both limits', async (t) => {
  const budget = new InboundBudget(10, 1000, 0)
  let taken = 0
  while (budget.take(10, 0)) taken++
  t.equal(taken, 10, 'a full bucket holds one second of messages')
  t.notOk(budget.take(10, 50), 'half a message refilled after 50 ms')
  t.ok(budget.take(10, 100), 'one message refilled after 100 ms')
  const bytes = new InboundBudget(0, 1000, 0)
  t.ok(bytes.take(600, 0))
  t.notOk(bytes.take(600, 0), 'the byte bucket is exhausted')
  t.ok(bytes.take(600, 200), '200 ms refill 200 bytes: 600 again')
  t.equal(inboundSize(Buffer.alloc(3)), 3)
  t.equal(inboundSize(new ArrayBuffer(4)), 4)
  t.equal(inboundSize([Buffer.alloc(2), Buffer.alloc(5)]), 7)
  t.equal(inboundSize('not from ws'), 0)
})

void t.test('flood: a client sending as fast as it can is closed (1008) within 1 s; another client keeps being served', async (t) => {
  const app = await buildApp({ inboundMessageRate: 100 })
  t.teardown(() => app.close())
  const url = await listen(app)
  const flooder = await openClient(`${url}/ws/flooder`)
  const calm = await openClient(`${url}/ws/calm`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 2)
  const closed = closeOf(flooder)
  const gc = (globalThis as { gc?: () => void }).gc
  gc?.()
  const rssBefore = process.memoryUsage().rss
  const started = performance.now()
  let sent = 0
  const flood = (): void => {
    if (flooder.readyState !== flooder.OPEN) return
    for (let i = 0; i < 200; i++) flooder.send(`spam ${sent++}`)
    setImmediate(flood)
  }
  flood()
  const { code, reason } = await closed
  const elapsed = performance.now() - started
  t.equal(code, CloseCode.POLICY_VIOLATION)
  t.equal(reason, 'rate limit exceeded')
  t.ok(elapsed < 1000, `closed ${Math.round(elapsed)} ms after the flood began (${sent} messages sent)`)
  gc?.()
  t.comment(`flood run: RSS ${(rssBefore / 2 ** 20).toFixed(1)} MiB before, ${((process.memoryUsage().rss - rssBefore) / 2 ** 20).toFixed(1)} MiB growth after the close (after GC)`)
  t.ok((app.received.get('flooder')?.length ?? 0) <= 101, `the handler saw ${app.received.get('flooder')?.length ?? 0} messages, no more than the bucket`)
  calm.send('still served?')
  await waitFor(() => app.received.get('calm')?.length === 1)
  t.equal(await app.stabilizer.sendToClient('calm', 'yes'), true)
  t.match(app.stabilizer.getStats().protection, { rateLimitCloses: 1 })
  await waitFor(() => app.stabilizer.getStats().closedByCause.rate_limited === 1)
  calm.terminate()
})

void t.test("rateLimitPolicy 'drop': excess messages never reach the handler, the connection stays, the bucket refills", async (t) => {
  const { app, clients: [client] } = await withClients(t, { inboundMessageRate: 50, rateLimitPolicy: 'drop' }, 'bursty')
  for (let i = 0; i < 200; i++) client.send(`m${i}`)
  await waitFor(() => app.stabilizer.getStats().protection.inboundDropped + (app.received.get('bursty')?.length ?? 0) === 200)
  const delivered = app.received.get('bursty')!.length
  t.ok(delivered >= 50 && delivered <= 60, `${delivered} of 200 delivered (bucket of 50)`)
  t.same(app.received.get('bursty')!.slice(0, 3), ['m0', 'm1', 'm2'], 'the first ones, in order')
  t.equal(app.stabilizer.getConnection('bursty')?.state, 'open')
  await new Promise((resolve) => setTimeout(resolve, 400))
  client.send('after a pause')
  await waitFor(() => app.received.get('bursty')!.at(-1) === 'after a pause')
  t.pass('accepted again once the bucket refilled')
  t.equal(app.stabilizer.getStats().protection.rateLimitCloses, 0)
  client.terminate()
})

void t.test('inboundByteRate closes a client that sends too many bytes', async (t) => {
  const { app, clients: [client] } = await withClients(t, { inboundByteRate: 10_000 }, 'heavy')
  const closed = once(client, 'close')
  for (let i = 0; i < 5; i++) client.send(Buffer.alloc(4_000))
  const [code] = await closed as [number]
  t.equal(code, CloseCode.POLICY_VIOLATION)
  t.equal(app.received.get('heavy')?.length, 2, 'two 4 kB messages fit in 10 kB/s, the third does not')
})

void t.test('rateLimitPolicy without a rate is refused', async (t) => {
  const err = await buildApp({ rateLimitPolicy: 'drop' }).then(() => undefined, (e: unknown) => e)
  t.match(err, { code: 'FST_WS_STABILIZER_INVALID_OPTION', message: /rateLimitPolicy/ })
})
