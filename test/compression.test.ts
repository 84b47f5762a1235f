import t from 'tap'
import Fastify from 'fastify'
import stabilizer, { InvalidOptionError } from '../lib/index.js'
import { perMessageDeflateOf } from '../lib/compression.js'
import { framesIn, openRawPeer } from './fixtures/raw-peer.js'
import { buildApp, listen, waitFor } from './fixtures/server.js'

const offer = ['Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits']

/** The handshake response and the RSV1 bit of the frames a broadcast of each message arrives in. */
async function negotiate (t: { teardown: (fn: () => unknown) => void }, compression: unknown, messages: string[] = []): Promise<{ head: string, compressed: boolean[] }> {
  const app = await buildApp({ compression: compression as never, heartbeatInterval: 0 })
  t.teardown(async () => await app.close())
  const peer = await openRawPeer(await listen(app), '/ws/p', offer)
  t.teardown(() => peer.destroy())
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  for (const message of messages) await app.stabilizer.broadcast(message)
  await waitFor(() => framesIn(peer.received()).length === messages.length)
  return { head: peer.head, compressed: framesIn(peer.received()).map((frame) => frame.rsv1) }
}

void t.test('true and {} keep ws\'s permessage-deflate defaults, compressed per socket', async (t) => {
  for (const compression of [true, {}, { strategy: 'per-socket' }]) {
    const { head, compressed } = await negotiate(t, compression, ['x'.repeat(1023), 'x'.repeat(1024)])
    t.match(head, /sec-websocket-extensions: permessage-deflate/i, `${JSON.stringify(compression)}: negotiated`)
    t.notMatch(head, /server_no_context_takeover/i, 'with context takeover, as ws does by default')
    t.same(compressed, [true, true], 'ws applies its threshold only without context takeover: everything is compressed')
  }
})

void t.test('the object form is handed to ws: threshold, window, context takeover', async (t) => {
  const { head, compressed } = await negotiate(t, { threshold: 100, serverMaxWindowBits: 11, serverNoContextTakeover: true, level: 9, memLevel: 9 }, ['y'.repeat(99), 'y'.repeat(100)])
  t.match(head, /server_no_context_takeover/i)
  t.match(head, /server_max_window_bits=11/i)
  t.same(compressed, [false, true], 'the threshold given')
})

void t.test('the shared strategy negotiates server_no_context_takeover and keeps the threshold', async (t) => {
  const { head, compressed } = await negotiate(t, { strategy: 'shared', threshold: 10 }, ['z'.repeat(9), 'z'.repeat(10)])
  t.match(head, /server_no_context_takeover/i)
  t.same(compressed, [false, true])
})

void t.test('perMessageDeflateOf: only the keys given reach ws; the shared strategy always disables context takeover', async (t) => {
  t.equal(perMessageDeflateOf(false), false)
  t.equal(perMessageDeflateOf(true), true)
  t.same(perMessageDeflateOf({ level: 1 }), { zlibDeflateOptions: { level: 1 } })
  t.same(perMessageDeflateOf({ memLevel: 4, serverNoContextTakeover: false }), { zlibDeflateOptions: { memLevel: 4 }, serverNoContextTakeover: false })
  const shared = perMessageDeflateOf({ strategy: 'shared', serverMaxWindowBits: 12 }) as Record<string, unknown>
  t.same(Object.keys(shared).map((key) => [key, shared[key]]), [['serverMaxWindowBits', 12], ['serverNoContextTakeover', true]], 'ws sees its own keys only (the compressor rides on a symbol)')
})

const bad: Array<[string, unknown, RegExp]> = [
  ['not a boolean or an object', 'yes', /"compression"/],
  ['a level out of range', { level: 12 }, /"compression\.level".*0 \(none\) to 9/],
  ['a window out of range', { serverMaxWindowBits: 16 }, /"compression\.serverMaxWindowBits"/],
  ['a negative threshold', { threshold: -1 }, /"compression\.threshold"/],
  ['an unknown strategy', { strategy: 'global' }, /"compression\.strategy".*'shared'/],
  ['an unknown key', { windowBits: 15 }, /"compression\.windowBits": unknown option \(known: strategy/],
  ['shared with context takeover', { strategy: 'shared', serverNoContextTakeover: false }, /"compression\.serverNoContextTakeover".*server_no_context_takeover/],
  ['shared with an 8-bit window', { strategy: 'shared', serverMaxWindowBits: 8 }, /"compression\.serverMaxWindowBits".*at least 9/]
]

for (const [name, compression, message] of bad) {
  void t.test(`register fails on a bad compression option: ${name}`, async (t) => {
    const app = Fastify()
    const err = await (async () => { await app.register(stabilizer, { compression: compression as never }) })().then(() => undefined, (e: unknown) => e as Error & { code?: string })
    t.ok(err instanceof InvalidOptionError, 'an InvalidOptionError')
    t.equal(err?.code, 'FST_WS_STABILIZER_INVALID_OPTION')
    t.match(err?.message, message)
    await app.close()
  })
}
