import t from 'tap'
import { once } from 'node:events'
import type { WebSocket } from 'ws'
import { CloseCode, MemoryLimitExceededError, type StabilizerOptions } from '../lib/index.js'
import { buildApp, listen, openClient, waitFor, withClients } from './fixtures/server.js'

/** A value whose stored size under key "k" is exactly `bytes` (1 for the key, 2 for the quotes). */
const sized = (bytes: number): string => 'x'.repeat(bytes - 3)
const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/**
 * Four holders, connected in the order a, b, c, d; then active in the order c, a, d, b
 * (so least recently active first: c). Sizes: a 100, b 300, c 60, d 80 — 540 in all.
 */
async function fourHolders (options: StabilizerOptions) {
  const app = await buildApp(options)
  const url = await listen(app)
  const clients: Record<string, WebSocket> = {}
  const closes: Record<string, number> = {}
  for (const id of ['a', 'b', 'c', 'd']) {
    clients[id] = await openClient(`${url}/ws/${id}`)
    clients[id].on('close', (code) => { closes[id] = code })
    await sleep(3)
  }
  await waitFor(() => app.stabilizer.getConnectionCount() === 4)
  for (const id of ['c', 'a', 'd', 'b']) {
    clients[id].send('activity')
    await waitFor(() => app.received.get(id)?.length === 1)
    await sleep(3)
  }
  const sizes: Record<string, number> = { a: 100, b: 300, c: 60, d: 80 }
  for (const [id, bytes] of Object.entries(sizes)) app.stabilizer.setUserData(id, 'k', sized(bytes))
  const writer = await openClient(`${url}/ws/w`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 5)
  return { app, clients, closes, writer }
}

const expectations: Array<[StabilizerOptions['memoryEvictionPolicy'], string[]]> = [
  ['oldest', ['a', 'b']], // needs 150: a (100) is not enough, a + b is
  ['lru', ['c', 'a']], //    c (60) + a (100) = 160 ≥ 150
  ['largest', ['b']] //      b (300) alone
]

for (const [policy, victims] of expectations) {
  void t.test(`maxTotalMemory with policy ${policy ?? ''}: evicts ${victims.join(' + ')} and no one else`, async (t) => {
    const { app, clients, closes, writer } = await fourHolders({ maxTotalMemory: 600, memoryEvictionPolicy: policy })
    t.teardown(() => app.close())
    t.equal(app.stabilizer.getMemoryUsage().userDataBytes, 540)
    app.stabilizer.setUserData('w', 'k', sized(210)) // 540 + 210 = 750: 150 over
    t.equal(app.stabilizer.getUserData('w', 'k'), sized(210), 'the write went through')
    const usage = app.stabilizer.getMemoryUsage()
    t.ok(usage.userDataBytes <= 600, `back under the limit: ${usage.userDataBytes}`)
    await waitFor(() => Object.keys(closes).length === victims.length)
    t.same(Object.keys(closes).sort(), [...victims].sort(), 'exactly the policy\'s victims')
    for (const id of victims) t.equal(closes[id], CloseCode.MEMORY_EVICTED)
    t.equal(app.stabilizer.getStats().protection.memoryEvictions, victims.length)
    await waitFor(() => app.stabilizer.getStats().totalDisconnections === victims.length)
    t.same(app.stabilizer.getStats().closedByCause, { memory_eviction: victims.length })
    for (const ws of [...Object.values(clients), writer]) ws.terminate()
  })
}

void t.test('an oversized write evicts nobody and changes nothing', async (t) => {
  const { app, closes, clients, writer } = await fourHolders({ maxTotalMemory: 600 })
  t.teardown(() => app.close())
  app.stabilizer.setUserData('w', 'k', sized(50))
  t.throws(() => app.stabilizer.setUserData('w', 'k', sized(601)), MemoryLimitExceededError)
  t.equal(app.stabilizer.getUserData('w', 'k'), sized(50), 'the old value is still there')
  t.equal(app.stabilizer.getMemoryUsage().userDataBytes, 590)
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.same(closes, {}, 'nobody was evicted')
  t.equal(app.stabilizer.getStats().protection.memoryEvictions, 0)
  for (const ws of [...Object.values(clients), writer]) ws.terminate()
})

void t.test('maxMemoryPerConnection: a write past it throws and changes nothing', async (t) => {
  const { app, clients: [ws] } = await withClients(t, { maxMemoryPerConnection: 100 }, 'solo')
  app.stabilizer.setUserData('solo', 'k', sized(60))
  app.stabilizer.setUserData('solo', 'j', sized(40)) // exactly 100
  const error = t.throws(() => app.stabilizer.setUserData('solo', 'i', sized(4))) as { code?: string, message?: string }
  t.match(error, { code: 'FST_WS_STABILIZER_MEMORY_LIMIT', message: /maxMemoryPerConnection is 100/ })
  t.throws(() => app.stabilizer.setUserData('solo', 'k', sized(61)), MemoryLimitExceededError, 'an overwrite counts its new size')
  t.equal(app.stabilizer.getUserData('solo', 'i'), undefined)
  t.equal(app.stabilizer.getUserData('solo', 'k'), sized(60))
  t.equal(app.stabilizer.getConnection('solo')?.userDataBytes, 100)
  app.stabilizer.setUserData('solo', 'k', sized(59)) // shrinking is always fine
  t.equal(app.stabilizer.getMemoryUsage().userDataBytes, 99)
  const closed = once(ws, 'close')
  ws.close(1000)
  await closed
  await waitFor(() => app.stabilizer.getStats().totalDisconnections === 1)
  t.equal(app.stabilizer.getMemoryUsage().userDataBytes, 0, 'released on close')
})

void t.test('memoryEvictionPolicy without maxTotalMemory is refused', async (t) => {
  const err = await buildApp({ memoryEvictionPolicy: 'largest' }).then(() => undefined, (e: unknown) => e)
  t.match(err, { code: 'FST_WS_STABILIZER_INVALID_OPTION', message: /memoryEvictionPolicy/ })
})
