import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { constants, inflateRawSync } from 'node:zlib'
import { chromium, type Page } from 'playwright-core'
import { WebSocket, type ClientOptions } from 'ws'
import { framesIn, openRawPeer } from './fixtures/raw-peer.js'
import { systemPython } from './fixtures/python-peer.js'
import { requirePrerequisites } from './fixtures/requires.js'
import { killProcess } from './fixtures/processes.js'
import { buildApp, httpUrl, listen, waitFor, type TestApp } from './fixtures/server.js'
import { sharedDeflateOf } from '../lib/wire.js'

// The shared strategy end to end: independent peers (ws, Python's websockets, Chromium) must
// decode every frame the shared compressor writes, and get exactly the bytes that were sent.

const threshold = 1024
const shared = { compression: { strategy: 'shared' as const, threshold }, heartbeatInterval: 0 }
const trailer = Buffer.from([0x00, 0x00, 0xff, 0xff])

/** A small seeded generator (xorshift32), so a failing payload can be reproduced. */
function generator (seed: number): () => number {
  let state = seed >>> 0 || 1
  return () => {
    state ^= state << 13
    state ^= state >>> 17
    state ^= state << 5
    return (state >>> 0) / 2 ** 32
  }
}

interface Payload { data: string | Buffer, binary: boolean }

/**
 * Messages of the sizes that matter: empty, around the threshold, around the frame header's
 * length boundaries (125/126, 65 535/65 536), large enough to span many TCP segments, and
 * random sizes; compressible and not; text (with multi-byte characters) and binary.
 */
function payloads (seed: number): Payload[] {
  const random = generator(seed)
  const sizes = [0, 1, 125, 126, threshold - 1, threshold, threshold + 1, 4096, 65_535, 65_536, 70_000, 300_000]
  for (let i = 0; i < 16; i++) sizes.push(Math.floor(random() * threshold * 4))
  const alphabet = ['a', 'b', 'c', ' ', '{', '"', ':', '1', '2', 'é', 'ß', '中', '😀']
  const out: Payload[] = []
  for (const [index, size] of sizes.entries()) {
    const compressible = index % 2 === 0
    const bytes = Buffer.alloc(size)
    for (let i = 0; i < size; i++) bytes[i] = compressible ? 97 + ((i * 7) % 13) : Math.floor(random() * 256)
    out.push({ data: bytes, binary: true })
    // Text of about `size` bytes (never splitting a character).
    const parts: string[] = []
    for (let length = 0; length < size;) {
      const part = compressible ? `{"id":${parts.length % 97},"v":"${alphabet[parts.length % alphabet.length]}"}` : alphabet[Math.floor(random() * alphabet.length)]
      parts.push(part)
      length += Buffer.byteLength(part)
    }
    out.push({ data: parts.join(''), binary: false })
  }
  return out
}

const bytesOf = (payload: Payload): Buffer => (typeof payload.data === 'string' ? Buffer.from(payload.data) : payload.data)
const digest = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex')

/** A test app with the shared strategy, listening; closed at the end of the test. */
async function sharedApp (t: { teardown: (fn: () => Promise<void>) => void }): Promise<{ app: TestApp, url: string }> {
  const app = await buildApp(shared)
  t.teardown(async () => await app.close())
  return { app, url: await listen(app) }
}

interface Received { data: Buffer, binary: boolean }

async function wsClient (url: string, options: ClientOptions): Promise<{ ws: WebSocket, got: Received[] }> {
  const ws = new WebSocket(url, options)
  const got: Received[] = []
  ws.on('message', (data, binary) => got.push({ data: data as Buffer, binary }))
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  return { ws, got }
}

void t.test('a broadcast is deflated once: every compressing socket gets the same RSV1 frame, which inflates to the message', async (t) => {
  const { app, url } = await sharedApp(t)
  const offers = {
    a: ['Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits'],
    b: ['Sec-WebSocket-Extensions: permessage-deflate'],
    small: ['Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10'],
    plain: []
  }
  const peers = Object.fromEntries(await Promise.all(Object.entries(offers).map(async ([id, headers]) => [id, await openRawPeer(url, `/ws/${id}`, headers)] as const)))
  t.teardown(() => { for (const peer of Object.values(peers)) peer.destroy() })
  await waitFor(() => app.stabilizer.getConnectionCount() === 4)
  for (const id of ['a', 'b', 'small']) t.match(peers[id].head, /sec-websocket-extensions: permessage-deflate;[^\r]*server_no_context_takeover/i, `${id}: server_no_context_takeover negotiated`)
  t.match(peers.small.head, /server_max_window_bits=10/i, 'the client\'s smaller window is agreed')
  t.notMatch(peers.plain.head, /sec-websocket-extensions/i, 'no compression for a client that did not offer it')

  const message = JSON.stringify(Array.from({ length: 60 }, (_, i) => ({ id: i, symbol: `SYM${i % 7}`, price: 100 + i / 4 })))
  const short = 'x'.repeat(threshold - 1)
  for (const sent of [message, short]) t.equal((await app.stabilizer.broadcast(sent)).sent, 4)
  await waitFor(() => Object.values(peers).every((peer) => framesIn(peer.received()).length === 2))

  const [aLong, aShort] = framesIn(peers.a.received())
  const [bLong] = framesIn(peers.b.received())
  const [smallLong] = framesIn(peers.small.received())
  const [plainLong, plainShort] = framesIn(peers.plain.received())
  t.ok(aLong.rsv1 && aLong.fin && aLong.opcode === 0x1, 'a compressed text message in one frame')
  t.ok(aLong.payload.equals(bLong.payload), 'the same deflated bytes for both sockets of the same window')
  t.ok(aLong.payload.length < message.length / 3, `${aLong.payload.length} bytes on the wire for ${message.length}`)
  t.equal(inflateRawSync(Buffer.concat([aLong.payload, trailer]), { finishFlush: constants.Z_SYNC_FLUSH }).toString(), message, 'it inflates to the message (RFC 7692: the 4-byte tail put back)')
  t.ok(smallLong.rsv1, 'the smaller window gets its own compressed frame')
  t.equal(inflateRawSync(Buffer.concat([smallLong.payload, trailer]), { windowBits: 10, finishFlush: constants.Z_SYNC_FLUSH }).toString(), message, 'which a 10-bit window inflates')
  t.notOk(plainLong.rsv1, 'the client without compression gets the plain frame')
  t.equal(plainLong.payload.toString(), message)
  t.ok(!aShort.rsv1 && aShort.payload.toString() === short, 'under the threshold the message goes uncompressed to compressing sockets too')
  t.ok(plainShort.payload.equals(aShort.payload))
})

void t.test('ws clients get every broadcast byte for byte, mixed with per-socket compressed and fragmented direct sends', async (t) => {
  const { app, url } = await sharedApp(t)
  const clients = {
    deflate: await wsClient(`${url}/ws/deflate`, { perMessageDeflate: true }),
    window10: await wsClient(`${url}/ws/window10`, { perMessageDeflate: { serverMaxWindowBits: 10 } }),
    plain: await wsClient(`${url}/ws/plain`, { perMessageDeflate: false })
  }
  t.teardown(() => { for (const { ws } of Object.values(clients)) ws.terminate() })
  await waitFor(() => app.stabilizer.getConnectionCount() === 3)
  for (const id of ['deflate', 'window10']) t.ok(sharedDeflateOf(app.stabilizer.getConnection(id)!.socket), `${id}: its broadcasts take the shared compressor`)
  const sent = payloads(23)
  const expected: Payload[] = []
  for (const [i, payload] of sent.entries()) {
    t.equal((await app.stabilizer.broadcast(payload.data)).sent, 3)
    expected.push(payload)
    if (i % 5 === 0) {
      // ws's own per-socket path on the same connections, between shared frames.
      const direct = { data: `direct ${i} `.repeat(200), binary: false }
      for (const id of Object.keys(clients)) t.equal(await app.stabilizer.sendToClient(id, direct.data), true)
      expected.push(direct)
    }
    if (i % 7 === 0) {
      // A message ws compresses and sends in three fragments; the next broadcast follows it.
      for (const id of Object.keys(clients)) {
        const socket = app.stabilizer.getConnection(id)!.socket
        socket.send('fragment one '.repeat(100), { fin: false, compress: true })
        socket.send('fragment two '.repeat(100), { fin: false, compress: true })
        socket.send('fragment three', { fin: true, compress: true })
      }
      expected.push({ data: 'fragment one '.repeat(100) + 'fragment two '.repeat(100) + 'fragment three', binary: false })
    }
  }
  await waitFor(() => Object.values(clients).every(({ got }) => got.length === expected.length), 20_000)
  for (const [id, { got }] of Object.entries(clients)) {
    const mismatches = expected.filter((payload, i) => got[i].binary !== payload.binary || !got[i].data.equals(bytesOf(payload))).length
    t.equal(mismatches, 0, `${id}: all ${expected.length} messages arrived intact and in order`)
  }
})

/**
 * Broadcasts every payload to the one client `id`, with (unless `fragments` is false) a message
 * ws compresses per socket and sends in three fragments after every seventh; returns what the
 * client must get, in order.
 */
async function broadcastWithFragments (t: Test, app: TestApp, id: string, sent: Payload[], fragments = true): Promise<Payload[]> {
  const expected: Payload[] = []
  const socket = app.stabilizer.getConnection(id)!.socket
  for (const [i, payload] of sent.entries()) {
    // A slow reader (Python, a browser) must not be closed as a slow consumer (4002) meanwhile.
    await waitFor(() => socket.bufferedAmount < 256 * 1024, 20_000)
    t.equal((await app.stabilizer.broadcast(payload.data)).sent, 1)
    expected.push(payload)
    if (fragments && i % 7 === 0) {
      socket.send('fragment one '.repeat(100), { fin: false, compress: true })
      socket.send('fragment two '.repeat(100), { fin: false, compress: true })
      socket.send('fragment three', { fin: true, compress: true })
      expected.push({ data: 'fragment one '.repeat(100) + 'fragment two '.repeat(100) + 'fragment three', binary: false })
    }
  }
  return expected
}

void t.test('Python\'s websockets client decodes every shared-compressed frame, mixed with fragmented sends', async (t) => {
  if (await requirePrerequisites(t, 'python3-websockets') !== false) return
  const { app, url } = await sharedApp(t)
  const script = fileURLToPath(new URL('./fixtures/python_digest_client.py', import.meta.url))
  const child = spawn(systemPython, [script, `${url}/ws/python`], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(async () => await killProcess(child))
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
  const next = async (): Promise<Record<string, unknown>> => JSON.parse((await lines.next()).value as string) as Record<string, unknown>
  const open = await next()
  t.match(open.extensions, /permessage-deflate;.*server_no_context_takeover/, 'the shared strategy\'s parameters were agreed')
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  t.ok(sharedDeflateOf(app.stabilizer.getConnection('python')!.socket), 'its broadcasts take the shared compressor')
  const sent = await broadcastWithFragments(t, app, 'python', payloads(7))
  let intact = 0
  for (const payload of sent) {
    const message = await next()
    if (message.binary === payload.binary && message.length === bytesOf(payload).length && message.sha256 === digest(bytesOf(payload))) intact++
  }
  t.equal(intact, sent.length, `all ${sent.length} messages arrived intact and in order`)
  await app.stabilizer.disconnect('python')
  t.match(await next(), { event: 'close', code: 1000 })
})

const chromiumPath = '/usr/bin/chromium'

/** Records every message's SHA-256 in `window.digests`, in arrival order (a script of the pages below). */
const recordDigests = `window.digests = []
const record = async (event) => {
  const slot = window.digests.length
  window.digests.push(null)
  const binary = typeof event.data !== 'string'
  const bytes = binary ? new Uint8Array(event.data instanceof Blob ? await event.data.arrayBuffer() : event.data) : new TextEncoder().encode(event.data)
  const hash = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))
  window.digests[slot] = { binary, length: bytes.length, sha256: Array.from(hash, (b) => b.toString(16).padStart(2, '0')).join('') }
}`

/** A plain page: a native WebSocket. */
const page = `<!doctype html><meta charset="utf-8"><script>
${recordDigests}
window.extensions = null
const ws = new WebSocket('ws://' + location.host + '/ws/browser')
ws.binaryType = 'arraybuffer'
ws.onopen = () => { window.extensions = ws.extensions }
ws.onmessage = record
</script>`

/** The client library in a page, as an app uses it. */
const clientPage = `<!doctype html><meta charset="utf-8"><script type="module">
import { StabilizedWebSocket } from '/client.js'
${recordDigests}
const ws = new StabilizedWebSocket('ws://' + location.host + '/ws/library')
ws.onmessage = record
</script>`

/** Opens the app's page in headless Chromium (closed at the test's end). */
async function openInChromium (t: Test, url: string): Promise<Page> {
  const browser = await chromium.launch({ executablePath: chromiumPath, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] })
  t.teardown(async () => await browser.close())
  const tab = await browser.newPage()
  await tab.goto(`${httpUrl(url)}/`)
  return tab
}

/** How many of `sent` the page received intact and in their place, once it has them all (or after 20 s). */
async function intactInPage (tab: Page, sent: Payload[]): Promise<number> {
  type Digest = { binary: boolean, length: number, sha256: string } | null
  let got: Digest[] = []
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline) {
    got = await tab.evaluate('window.digests') as Digest[]
    if (got.length === sent.length && got.every((d) => d !== null)) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return sent.filter((payload, i) => got[i]?.binary === payload.binary && got[i]?.sha256 === digest(bytesOf(payload))).length
}

void t.test('headless Chromium decodes every shared-compressed frame, mixed with fragmented sends', async (t) => {
  if (await requirePrerequisites(t, 'chromium') !== false) return
  const app = await buildApp(shared)
  app.get('/', async (_request, reply) => await reply.type('text/html').send(page))
  t.teardown(async () => await app.close())
  const tab = await openInChromium(t, await listen(app))
  await waitFor(() => app.stabilizer.getConnectionCount() === 1, 10_000)
  t.match(await tab.evaluate('window.extensions'), /permessage-deflate;.*server_no_context_takeover/, 'Chromium agreed to the shared strategy\'s parameters')
  t.ok(sharedDeflateOf(app.stabilizer.getConnection('browser')!.socket), 'its broadcasts take the shared compressor')
  const sent = await broadcastWithFragments(t, app, 'browser', payloads(11))
  t.equal(await intactInPage(tab, sent), sent.length, `all ${sent.length} messages arrived intact and in order`)
})

void t.test('the client library in Chromium decodes every shared-compressed broadcast', async (t) => {
  if (await requirePrerequisites(t, 'chromium') !== false) return
  const { bundleClient } = await import('../example/client-bundle.js')
  const client = await bundleClient()
  const app = await buildApp({ ...shared, secrets: ['c'.repeat(40)] })
  app.get('/', async (_request, reply) => await reply.type('text/html').send(clientPage))
  app.get('/client.js', async (_request, reply) => await reply.type('text/javascript').send(client))
  t.teardown(async () => await app.close())
  const tab = await openInChromium(t, await listen(app))
  await waitFor(() => app.stabilizer.getConnection('library')?.protocol === true, 10_000)
  t.ok(sharedDeflateOf(app.stabilizer.getConnection('library')!.socket), 'a stabilizer.v1 connection from Chromium takes the shared compressor')
  // A raw message is not a stabilizer.v1 frame: this client gets broadcasts only.
  const sent = await broadcastWithFragments(t, app, 'library', payloads(13), false)
  t.equal(await intactInPage(tab, sent), sent.length, `all ${sent.length} messages arrived intact, in order, through the client library`)
})

void t.test('a stabilizer.v1 client decodes shared-compressed broadcasts, positions intact', async (t) => {
  const { ProtocolPeer } = await import('./fixtures/protocol-peer.js')
  const app = await buildApp({ ...shared, secrets: ['s'.repeat(40)] })
  t.teardown(async () => await app.close())
  const url = await listen(app)
  const peers = [await ProtocolPeer.open(`${url}/ws/p1`), await ProtocolPeer.open(`${url}/ws/p2`)]
  const texts = [JSON.stringify({ items: Array.from({ length: 200 }, (_, i) => ({ i, name: `item ${i}` })) }), 'short', 'x'.repeat(threshold + 1)]
  for (const text of texts) await app.stabilizer.broadcast(text)
  for (const peer of peers) {
    await peer.until(() => peer.messages.length === texts.length)
    t.same(peer.texts, texts, 'every message intact')
    t.same(peer.messages.map((m) => [m.stream, m.seq]), [['*', 1], ['*', 2], ['*', 3]], 'with its position')
    t.same(peer.malformed, [])
    peer.socket.terminate()
  }
})
