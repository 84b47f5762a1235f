import t from 'tap'
import { once } from 'node:events'
import { Value } from '@sinclair/typebox/value'
import type { WebSocket } from 'ws'
import { BroadcastFailedError, StatsResponseSchema, type StabilizerStats } from '../lib/index.js'
import { buildApp, httpUrl, listen, openClient, waitFor, withClients } from './fixtures/server.js'

function received (ws: WebSocket): Promise<{ data: string, isBinary: boolean }> {
  return once(ws, 'message').then(([data, isBinary]) => ({ data: String(data), isBinary: isBinary as boolean }))
}

void t.test('sendToClient: text, bytes and JSON; true once written', async (t) => {
  const { app, clients: [ws] } = await withClients(t, {}, 'c0')
  const cases: Array<[unknown, string, boolean]> = [
    ['plain text', 'plain text', false],
    [Buffer.from('bytes'), 'bytes', true],
    [new Uint8Array([104, 105]), 'hi', true],
    [new Uint8Array([0, 104, 105, 0]).subarray(1, 3), 'hi', true],
    [new Uint8Array([111, 107]).buffer, 'ok', true],
    [{ type: 'chat', text: 'hé' }, '{"type":"chat","text":"hé"}', false],
    [42, '42', false],
    [null, 'null', false]
  ]
  for (const [message, text, isBinary] of cases) {
    const next = received(ws)
    t.equal(await app.stabilizer.sendToClient('c0', message as never), true)
    t.same(await next, { data: text, isBinary }, `${text}`)
  }
})

void t.test('sendToClient never throws for a gone client; rejects an unserializable message', async (t) => {
  const { app, clients: [ws] } = await withClients(t, {}, 'c0')
  t.equal(await app.stabilizer.sendToClient('nobody', 'x'), false)
  await t.rejects(app.stabilizer.sendToClient('c0', { n: 1n } as never), TypeError)
  await t.rejects(app.stabilizer.sendToClient('c0', undefined as never), TypeError)
  const closed = once(ws, 'close')
  ws.close(1000)
  await closed
  await waitFor(() => app.stabilizer.getConnectionCount() === 0)
  t.equal(await app.stabilizer.sendToClient('c0', 'x'), false)
})

void t.test('sendToClient resolves false when the socket dies before writing', async (t) => {
  const { app } = await withClients(t, {}, 'c0')
  const connection = app.stabilizer.getConnection('c0')!
  // 32 MiB cannot be flushed to the kernel in one go, so the write is still pending.
  const sending = app.stabilizer.sendToClient('c0', Buffer.alloc(32 << 20))
  connection.socket.terminate()
  t.equal(await sending, false)
})

void t.test('broadcast: honest counts with exclusions and groups', async (t) => {
  const { app, clients } = await withClients(t, {}, 'c0', 'c1', 'c2', 'c3')
  const all = clients.map(received)
  t.same(await app.stabilizer.broadcast('all'), { total: 4, sent: 4, failed: 0, skipped: 0, dropped: 0, published: true })
  t.same((await Promise.all(all)).map((m) => m.data), ['all', 'all', 'all', 'all'])
  t.same(await app.stabilizer.broadcast('x', { exclude: 'c0' }), { total: 3, sent: 3, failed: 0, skipped: 0, dropped: 0, published: true }, 'total excludes the excluded')
  t.same(await app.stabilizer.broadcast('x', { exclude: ['c0', 'c1', 'ghost'] }), { total: 2, sent: 2, failed: 0, skipped: 0, dropped: 0, published: true })
  app.stabilizer.join('c1', 'team')
  app.stabilizer.join('c2', 'team')
  t.same(await app.stabilizer.broadcast('x', { group: 'team', exclude: 'c2' }), { total: 1, sent: 1, failed: 0, skipped: 0, dropped: 0, published: true })
  t.same(await app.stabilizer.broadcast('x', { group: 'nobody-here' }), { total: 0, sent: 0, failed: 0, skipped: 0, dropped: 0, published: true })
  const binary = new Promise<boolean>((resolve) => clients[3].on('message', (data, isBinary) => { if (isBinary) resolve(String(data) === '\x01\x02\x03') }))
  await app.stabilizer.broadcast(Buffer.from([1, 2, 3]))
  t.equal(await binary, true, 'bytes go out as a binary frame')
  await t.rejects(app.stabilizer.broadcast({ self: undefined, big: 1n } as never), BroadcastFailedError)
})

void t.test('broadcast yields every maxConcurrentBroadcast sends and counts sockets closed meanwhile as skipped', async (t) => {
  const { app } = await withClients(t, { maxConcurrentBroadcast: 1 }, 'c0', 'c1', 'c2', 'c3')
  const order: string[] = []
  const broadcasting = app.stabilizer.broadcast('tick').then((result) => { order.push('broadcast done'); return result })
  setImmediate(() => order.push('other work'))
  // c1 starts closing after the first send, before its turn comes.
  const closing = app.stabilizer.disconnect('c1')
  const result = await broadcasting
  t.same(result, { total: 4, sent: 3, failed: 0, skipped: 1, dropped: 0, published: true })
  t.same(order, ['other work', 'broadcast done'], 'the event loop ran between sends')
  await closing
})

void t.test('stats route: schema, counts by code and cause, client ids only on request', async (t) => {
  const { app, url, clients } = await withClients(t, { statsIncludeClientIds: false }, 'c0', 'c1', 'c2')
  app.stabilizer.join('c0', 'g')
  const closed = once(clients[1], 'close')
  clients[1].close(1000, 'bye')
  await closed
  await app.stabilizer.disconnect('c2', 4001, 'kicked')
  await waitFor(() => app.stabilizer.getStats().totalDisconnections === 2)
  const response = await fetch(`${httpUrl(url)}/ws-stats`)
  t.equal(response.status, 200)
  const stats = await response.json() as StabilizerStats
  t.ok(Value.Check(StatsResponseSchema, stats), 'matches the schema')
  t.match(stats, {
    status: 'running',
    activeConnections: 1,
    totalConnections: 3,
    totalDisconnections: 2,
    closedByCode: { 1000: 1, 4001: 1 },
    closedByCause: { client_closed: 1, server_disconnect: 1 },
    groups: 1,
    memory: { connections: 1 }
  })
  t.notOk('clientIds' in stats)
  t.type(stats.uptimeMs, 'number')
})

void t.test('stats route: configurable path, client ids opt-in, can be disabled', async (t) => {
  const withIds = await buildApp({ statsRoute: '/internal/ws', statsIncludeClientIds: true })
  const url = await listen(withIds)
  const ws = await openClient(`${url}/ws/zed`)
  await waitFor(() => withIds.stabilizer.getConnectionCount() === 1)
  const stats = await (await fetch(`${httpUrl(url)}/internal/ws`)).json() as StabilizerStats
  t.same(stats.clientIds, ['zed'])
  t.equal((await fetch(`${httpUrl(url)}/ws-stats`)).status, 404)
  ws.terminate()
  await withIds.close()

  const without = await buildApp({ statsRoute: false })
  const url2 = await listen(without)
  t.equal((await fetch(`${httpUrl(url2)}/ws-stats`)).status, 404)
  await without.close()
})
