import t from 'tap'
import { once } from 'node:events'
import { createRequire } from 'node:module'
import { wholeFrame } from '../lib/frame.js'
import { idleTransport, plainFrameTransport, sendEmptyPing, serverWindowBits, sharedDeflateOf, takePongs } from '../lib/wire.js'
import { clientFrame, openRawPeer } from './fixtures/raw-peer.js'
import { startPythonClient } from './fixtures/python-peer.js'
import { requirePrerequisites } from './fixtures/requires.js'
import { buildApp, listen, openClient, waitFor, withClients } from './fixtures/server.js'

// Payload lengths around every boundary of the frame header (7-bit, 16-bit, 64-bit lengths).
const lengths = [0, 1, 125, 126, 127, 65_535, 65_536, 70_000]
const payloadOf = (length: number): Buffer => Buffer.from('abcdefghijklmnopqrstuvwxyz'.repeat(Math.ceil(length / 26)).slice(0, length))

// ws's own framing, as the oracle: its Sender is exported at runtime (not in @types/ws).
const { Sender } = createRequire(import.meta.url)('ws') as { Sender: { frame: (data: Buffer, options: object) => Buffer[] } }

/** An app with compression on and one client, c0, that negotiated permessage-deflate. */
async function compressingClient (t: { teardown: (fn: () => Promise<void>) => void }): Promise<{ app: Awaited<ReturnType<typeof buildApp>>, ws: Awaited<ReturnType<typeof openClient>> }> {
  const app = await buildApp({ compression: true })
  t.teardown(async () => await app.close())
  const url = await listen(app)
  const ws = await openClient(`${url}/ws/c0`, { perMessageDeflate: true })
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  return { app, ws }
}

void t.test('a whole frame is byte for byte what ws frames for a server', async (t) => {
  for (const binary of [false, true]) {
    for (const length of lengths) {
      const payload = payloadOf(length)
      const expected = Buffer.concat(Sender.frame(payload, { fin: true, opcode: binary ? 2 : 1, mask: false, readOnly: false, rsv1: false }))
      t.ok(wholeFrame(payload, binary).equals(expected), `${binary ? 'binary' : 'text'} of ${length} bytes`)
    }
  }
})

void t.test('the installed ws allows the direct write on an idle open socket, and not while its sender is busy', async (t) => {
  const { app } = await compressingClient(t)
  const socket = app.stabilizer.getConnection('c0')!.socket
  const transport = idleTransport(socket)
  t.ok(transport, 'an idle open socket has a transport (if this fails, ws changed the internals lib/wire.ts relies on)')
  t.equal(transport, (socket as unknown as { _socket: unknown })._socket, 'the transport is the socket\'s own')

  socket.send(Buffer.alloc(64 * 1024, 1), { compress: true })
  t.equal(idleTransport(socket), undefined, 'not while a message is being compressed')
  await waitFor(() => idleTransport(socket) !== undefined)

  socket.send('first part', { fin: false, compress: false })
  t.equal(idleTransport(socket), undefined, 'not between the fragments of a message')
  socket.send(' and the rest', { fin: true, compress: false })
  t.ok(idleTransport(socket), 'idle again once the message ended')
})

void t.test('broadcasts keep their order behind a message being compressed', async (t) => {
  const { app, ws } = await compressingClient(t)
  const got: string[] = []
  ws.on('message', (data) => got.push(String(data).slice(0, 10)))
  const big = 'compressed'.repeat(10_000)
  const sending = app.stabilizer.sendToClient('c0', big)
  const results = await Promise.all([app.stabilizer.broadcast('b1'), app.stabilizer.broadcast('b2')])
  t.same(results.map((r) => r.sent), [1, 1])
  t.equal(await sending, true)
  await app.stabilizer.broadcast('b3')
  await waitFor(() => got.length === 4)
  t.same(got, ['compressed', 'b1', 'b2', 'b3'])
})

void t.test('with permessage-deflate negotiated, a broadcast is still compressed (the shared plain frame is only for uncompressed sockets)', async (t) => {
  const { app, ws } = await compressingClient(t)
  t.equal(plainFrameTransport(app.stabilizer.getConnection('c0')!.socket), undefined, 'no shared plain frame for a compressing socket')
  const transport = (ws as unknown as { _socket: { bytesRead: number } })._socket
  const before = transport.bytesRead
  const big = 'compressible '.repeat(10_000)
  const received = once(ws, 'message') as Promise<[Buffer]>
  t.equal((await app.stabilizer.broadcast(big)).sent, 1)
  t.equal(String((await received)[0]), big)
  const onTheWire = transport.bytesRead - before
  t.ok(onTheWire < big.length / 10, `${onTheWire} bytes on the wire for a ${big.length}-byte message`)
})

void t.test('the installed ws lets the shared compressor serve a socket, and its own deflater stays unused by broadcasts', async (t) => {
  const app = await buildApp({ compression: { strategy: 'shared' }, heartbeatInterval: 0 })
  t.teardown(async () => await app.close())
  const url = await listen(app)
  const ws = await openClient(`${url}/ws/c0`, { perMessageDeflate: { serverMaxWindowBits: 12 } })
  const other = await openClient(`${url}/ws/c1`, { perMessageDeflate: false })
  t.teardown(() => { ws.terminate(); other.terminate() })
  await waitFor(() => app.stabilizer.getConnectionCount() === 2)
  const socket = app.stabilizer.getConnection('c0')!.socket
  t.ok(sharedDeflateOf(socket), 'a socket that negotiated compression with the shared strategy names its compressor (if this fails, ws changed the internals lib/wire.ts relies on)')
  t.equal(serverWindowBits(socket), 12, 'and the window it agreed')
  t.equal(sharedDeflateOf(app.stabilizer.getConnection('c1')!.socket), undefined, 'not a socket without compression')
  const big = 'shared '.repeat(2_000)
  const received = once(ws, 'message') as Promise<[Buffer]>
  t.equal((await app.stabilizer.broadcast(big)).sent, 2)
  t.equal(String((await received)[0]), big)
  const perSocket = (socket as unknown as { _sender: { _extensions: Record<string, { _deflate: unknown }> } })._sender._extensions['permessage-deflate']
  t.equal(perSocket._deflate, null, 'ws never created its per-socket deflate stream for the broadcast')
  await app.stabilizer.sendToClient('c0', big)
  t.not(perSocket._deflate, null, 'a direct send still takes ws\'s per-socket path')
})

void t.test('per-socket compression (compression: true) is not served by the shared compressor', async (t) => {
  const { app } = await compressingClient(t)
  t.equal(sharedDeflateOf(app.stabilizer.getConnection('c0')!.socket), undefined)
})

void t.test('broadcasts of every header length reach a ws client intact, text and binary', async (t) => {
  const { app, clients: [ws] } = await withClients(t, {}, 'c0')
  t.ok(plainFrameTransport(app.stabilizer.getConnection('c0')!.socket), 'an uncompressed idle socket takes the shared frame (if this fails, ws changed the internals lib/wire.ts relies on)')
  for (const binary of [false, true]) {
    for (const length of lengths) {
      const payload = payloadOf(length)
      const next = once(ws, 'message') as Promise<[Buffer, boolean]>
      t.same(await app.stabilizer.broadcast(binary ? payload : payload.toString()), { total: 1, sent: 1, failed: 0, skipped: 0, dropped: 0, published: true })
      const [data, isBinary] = await next
      t.ok(data.equals(payload) && isBinary === binary, `${binary ? 'binary' : 'text'} of ${length} bytes`)
    }
  }
})

void t.test('broadcasts of every header length reach a Python websockets client intact', { skip: await requirePrerequisites(t, 'python3-websockets') }, async (t) => {
  const app = await buildApp()
  t.teardown(async () => await app.close())
  const url = await listen(app)
  const python = startPythonClient(`${url}/ws/py`)
  t.teardown(() => { python.child.kill() })
  t.same(await python.next(), { event: 'open' })
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  for (const length of lengths) {
    const payload = payloadOf(length).toString()
    t.equal((await app.stabilizer.broadcast(payload)).sent, 1)
    const event = await python.next()
    t.ok(event.event === 'message' && event.data === payload, `text of ${length} bytes`)
  }
})

void t.test('an empty ping reaches the client, written directly or through ws while its sender is busy', async (t) => {
  const app = await buildApp({ compression: true, heartbeatInterval: 0 })
  t.teardown(async () => await app.close())
  const url = await listen(app)
  const ws = await openClient(`${url}/ws/c0`, { perMessageDeflate: true })
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const socket = app.stabilizer.getConnection('c0')!.socket
  const pings: Buffer[] = []
  ws.on('ping', (data: Buffer) => pings.push(data))
  t.ok(idleTransport(socket))
  sendEmptyPing(socket)
  await waitFor(() => pings.length === 1)
  socket.send(Buffer.alloc(64 * 1024, 1), { compress: true })
  t.equal(idleTransport(socket), undefined)
  sendEmptyPing(socket)
  await waitFor(() => pings.length === 2)
  t.same(pings.map((data) => data.length), [0, 0], 'both empty')
})

void t.test('takePongs takes over only a parser that stands between frames', async (t) => {
  const app = await buildApp({})
  t.teardown(async () => await app.close())
  const url = await listen(app)
  const peer = await openRawPeer(url, '/ws/half')
  t.teardown(() => peer.destroy())
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const socket = app.stabilizer.getConnection('half')!.socket
  const received: string[] = []
  socket.on('message', (data) => received.push(String(data)))
  const frame = clientFrame(0x1, Buffer.from('half a frame, then the rest'))
  peer.sendBytes(frame.subarray(0, 4))
  await waitFor(() => (socket as unknown as { _receiver: { _bufferedBytes: number } })._receiver._bufferedBytes > 0)
  t.equal(takePongs(socket, () => { t.fail('no pong was sent') }), false, 'not in the middle of a frame')
  peer.sendBytes(frame.subarray(4))
  await waitFor(() => received.length === 1)
  t.same(received, ['half a frame, then the rest'], 'and the frame is whole when the rest comes')
})
