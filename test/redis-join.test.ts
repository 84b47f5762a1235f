import t from 'tap'
import { redisAdapter } from '../lib/adapter/redis.js'
import { startHoldingLink } from './fixtures/holding-link.js'
import { ProtocolPeer } from './fixtures/protocol-peer.js'
import { startRedisServer } from './fixtures/redis-server.js'
import { buildApp, listen, openClient, waitFor } from './fixtures/server.js'

// A join on one instance takes effect for what any instance publishes after it returned, also
// while the instance's subscription to the group is still on its way to Redis.
const server = await startRedisServer()
t.teardown(server.stop)
const secrets = ['s'.repeat(32) + '-redis-join-tests']

void t.test('a member joined on B gets what A publishes right after, though B\'s subscription was not live yet', async (t) => {
  const link = await startHoldingLink(server.port)
  t.teardown(link.close)
  const keyPrefix = `join${process.pid}:`
  const a = await buildApp({ secrets, adapter: redisAdapter({ redis: server.url, keyPrefix }) })
  const b = await buildApp({ secrets, adapter: redisAdapter({ redis: link.url, keyPrefix }) })
  t.teardown(async () => { await a.close(); await b.close() })
  const urlB = await listen(b)
  await listen(a)
  const plain = await openClient(`${urlB}/ws/pat`)
  const got: string[] = []
  plain.on('message', (data) => got.push(String(data)))
  const peer = await ProtocolPeer.open(`${urlB}/ws/pia`)
  t.teardown(() => { plain.terminate(); peer.socket.terminate() })
  await waitFor(() => b.stabilizer.getConnectionCount() === 2)

  t.match(await a.stabilizer.broadcast('before the join', { group: 'room' }), { published: true })
  await new Promise((resolve) => setTimeout(resolve, 5)) // a later millisecond

  // B's link to Redis is held: its subscription to the group waits, A's publish does not.
  link.hold()
  t.equal(b.stabilizer.join('pat', 'room'), true)
  t.equal(b.stabilizer.join('pia', 'room'), true)
  t.match(await a.stabilizer.broadcast('right after the join', { group: 'room' }), { published: true })
  t.match(await a.stabilizer.broadcast('and another', { group: 'room' }), { published: true })
  link.release()

  await waitFor(() => got.length >= 2)
  await peer.until(() => peer.messagesOf('g:room').length >= 2)
  t.match(await a.stabilizer.broadcast('once live', { group: 'room' }), { published: true })
  await waitFor(() => got.length >= 3)
  await peer.until(() => peer.messagesOf('g:room').length >= 3)
  await new Promise((resolve) => setTimeout(resolve, 100)) // nothing more comes
  const expected = ['right after the join', 'and another', 'once live']
  t.same(got, expected, 'the plain client: every message published after its join, once, in order; none from before')
  const messages = peer.messagesOf('g:room')
  t.same(messages.map((m) => String(m.data)), expected, 'the protocol client: the same')
  t.same(messages.map((m) => m.seq), [2, 3, 4], 'with their positions in the stream')
  t.ok(messages.every((m) => !m.duplicate))
  const follow = peer.control.find((frame) => frame.t === 'follow' && frame.c === 'g:room')
  t.match(follow, { s: 1 }, 'it follows the group from the message before its join')
})
