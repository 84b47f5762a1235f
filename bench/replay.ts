/**
 * What a resume costs with the stabilizer.v1 protocol: bytes held per retained session for
 * what it missed (the streams' logs, measured on the heap after GC), and the time to replay
 * 1 000 messages to a resuming client, over real sockets on 127.0.0.1.
 *
 *   node --expose-gc --import tsx bench/replay.ts [--sessions=200] [--messages=1000] [--size=100]
 */
import Fastify from 'fastify'
import { once } from 'node:events'
import { WebSocket } from 'ws'
import stabilizer from '../lib/index.js'
import { encodePositions, type Positions } from '../lib/protocol.js'

const arg = (name: string, fallback: number): number => {
  const given = process.argv.find((a) => a.startsWith(`--${name}=`))
  return given === undefined ? fallback : Number(given.split('=')[1])
}
const sessions = arg('sessions', 200)
const messages = arg('messages', 1000)
const size = arg('size', 100)
const gc = (globalThis as { gc?: () => void }).gc
if (gc === undefined) throw new Error('run with node --expose-gc')

const app = Fastify()
await app.register(stabilizer, { secrets: ['b'.repeat(40)], replayBufferSize: messages, replayBufferBytes: messages * (size + 200), heartbeatInterval: 0 })
app.get('/ws/:clientId', { websocket: true }, () => {})
await app.listen({ port: 0, host: '127.0.0.1' })
const { port } = app.server.address() as { port: number }
const url = `ws://127.0.0.1:${port}`

async function openPeer (id: string, protocols: string[] = ['stabilizer.v1']): Promise<{ ws: WebSocket, welcome: { token: string, positions: Positions } }> {
  const ws = new WebSocket(`${url}/ws/${id}`, protocols)
  const [data] = await once(ws, 'message') as [Buffer]
  return { ws, welcome: JSON.parse(data.toString()) as { token: string, positions: Positions } }
}

async function settle (): Promise<number> {
  for (let i = 0; i < 3; i++) { gc!(); await new Promise((resolve) => setTimeout(resolve, 20)) }
  const { heapUsed, arrayBuffers } = process.memoryUsage()
  return heapUsed + arrayBuffers
}

const waitFor = async (condition: () => boolean): Promise<void> => {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 5))
}

// Retained sessions, each sent `messages` while away: first unique messages (sendToClient),
// then shared ones (broadcast: one payload for every log).
// Sessions `b…` are in the group that the broadcasts go to; sessions `s…` get the unique messages.
const tokens: string[] = []
const offers: string[] = []
for (let i = 0; i < sessions; i++) {
  const { ws, welcome } = await openPeer(`s${i}`)
  tokens.push(welcome.token)
  offers.push(encodePositions(welcome.positions)!)
  ws.terminate()
  const member = await openPeer(`b${i}`)
  app.stabilizer.join(`b${i}`, 'b')
  member.ws.terminate()
}
await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 2 * sessions)
const payload = (i: number): string => `${i}`.padEnd(size, 'x')

const empty = await settle()
for (let m = 0; m < messages; m++) {
  for (let i = 0; i < sessions; i++) await app.stabilizer.sendToClient(`s${i}`, payload(m * sessions + i))
}
const unique = await settle()

const rows: string[][] = []
rows.push(['unique messages (sendToClient)', `${messages} × ${size} B`, ((unique - empty) / sessions / 1024).toFixed(1)])

// Time to replay: one session resumes and receives its `messages` missed messages.
const replayTimes: number[] = []
for (let r = 0; r < 5; r++) {
  const id = `s${r}`
  const start = performance.now()
  const ws = new WebSocket(`${url}/ws/${id}`, ['stabilizer.v1', `stabilizer.token.${tokens[r]}`, `stabilizer.pos.${offers[r]}`])
  let received = 0
  let welcomeAt = 0
  let outcome = ''
  ws.on('message', (data: Buffer) => {
    const frame = JSON.parse(data.toString()) as { t: string, resume?: { outcome: string } }
    if (frame.t === 'welcome') { welcomeAt = performance.now(); outcome = frame.resume?.outcome ?? 'new' } else if (frame.t === 'm') received++
  })
  await waitFor(() => received === messages)
  const end = performance.now()
  replayTimes.push(end - start)
  if (r === 0) console.error(`resume ${id}: outcome ${outcome}, welcome after ${(welcomeAt - start).toFixed(1)} ms, ${received} replayed by ${(end - start).toFixed(1)} ms`)
  ws.terminate()
}
await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 2 * sessions)

// A group's broadcasts are logged once, in the group's stream, whatever the number of sessions.
const before = await settle()
for (let m = 0; m < messages; m++) await app.stabilizer.broadcast(payload(m), { group: 'b' })
const shared = await settle()
rows.push(['broadcasts to their group (one stream)', `${messages} × ${size} B`, ((shared - before) / sessions / 1024).toFixed(1)])

replayTimes.sort((a, b) => a - b)
console.log(`## Resume cost (${sessions} retained sessions, Node ${process.version})\n`)
console.log('| missed while away | messages | heap + buffers KiB/session (after GC) |')
console.log('| --- | --- | --- |')
for (const row of rows) console.log(`| ${row.join(' | ')} |`)
console.log(`\nTime to resume and receive ${messages} replayed ${size}-byte messages (connect → last message, 5 runs): median ${replayTimes[2].toFixed(1)} ms, min ${replayTimes[0].toFixed(1)}, max ${replayTimes[4].toFixed(1)}`)
await app.close()
