// The resuming client of bench/scaleout.ts, in a process of its own:
//   node --import tsx bench/scaleout-peer.ts
// JSON commands on stdin, one reply line each:
//   {"cmd":"open","kind","url","id","room"}  connects (stabilizer.v1 at <url>/ws/<id>, or
//     socket.io-client naming its room) and waits for the welcome / connect
//   {"cmd":"wait","count"}  until `count` messages arrived since open
//   {"cmd":"drop"}  loses the connection without a close handshake the server could take as a
//     goodbye (the stabilizer: no close frame; socket.io: a transport close, not a disconnect)
//   {"cmd":"resume","url","expect"}  reconnects to another instance with what the stabilizer's
//     welcome / socket.io's packets gave (token and positions; pid and offset) and times
//     connect → the `expect`-th replayed message
import { createInterface } from 'node:readline'
import { WebSocket } from 'ws'
import { io, type Socket } from 'socket.io-client'
import { encodePositions, type Positions } from '../lib/protocol.js'

type Kind = 'stabilizer' | 'socket.io'
interface Command { cmd: string, kind?: Kind, url?: string, id?: string, room?: string, count?: number, expect?: number }

const print = (value: Record<string, unknown>): void => { process.stdout.write(`${JSON.stringify(value)}\n`) }

let kind: Kind = 'stabilizer'
let clientId = ''
let ws: WebSocket | undefined
let socket: Socket | undefined
let received = 0
let token = ''
const positions: Positions = {}
/** Frames received since open, by type (what a failed wait reports). */
let frames: Record<string, number> = {}
/** Called on every message; resolves whoever waits. */
let onMessage: () => void = () => {}

/** stabilizer.v1 frames: keeps the positions as PROTOCOL.md §6 says, counts messages. */
function stabilizerFrame (socketNow: WebSocket, data: Buffer, onWelcome: (frame: Record<string, unknown>) => void): void {
  const frame = JSON.parse(data.toString()) as Record<string, unknown>
  frames[String(frame.t)] = (frames[String(frame.t)] ?? 0) + 1
  if (frame.t === 'welcome') {
    for (const stream of Object.keys(positions)) Reflect.deleteProperty(positions, stream)
    Object.assign(positions, frame.positions)
    token = frame.token as string
    onWelcome(frame)
  } else if (frame.t === 'follow') {
    positions[frame.c as string] = [frame.e as string, frame.s as number]
  } else if (frame.t === 'ping') {
    socketNow.send(JSON.stringify({ t: 'pong', ts: frame.ts }))
  } else if (frame.t === 'm') {
    if (typeof frame.c === 'string') positions[frame.c] = [frame.e as string, frame.s as number]
    received++
    onMessage()
  }
}

async function openStabilizer (url: string, protocols: string[], onWelcome: (frame: Record<string, unknown>) => void = () => {}): Promise<void> {
  const next = new WebSocket(`${url}/ws/${clientId}`, protocols)
  ws = next
  await new Promise<void>((resolve, reject) => {
    next.once('error', reject)
    next.once('close', (code, reason) => reject(new Error(`closed ${code} ${String(reason)}`)))
    next.on('message', (data: Buffer) => {
      stabilizerFrame(next, data, (frame) => { onWelcome(frame); resolve() })
    })
  })
}

function openSocketIo (url: string, auth: Record<string, unknown>, onConnect: () => void = () => {}): Promise<void> {
  const next = io(url, { transports: ['websocket'], reconnection: false, forceNew: true, auth })
  socket = next
  next.on('m', () => { received++; onMessage() })
  return new Promise<void>((resolve, reject) => {
    next.once('connect', () => { onConnect(); resolve() })
    next.once('connect_error', reject)
  })
}

async function until (count: number, timeoutMs: number): Promise<void> {
  if (received >= count) return
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`${received} of ${count} messages within ${timeoutMs} ms (frames ${JSON.stringify(frames)})`)) }, timeoutMs)
    onMessage = () => {
      if (received < count) return
      clearTimeout(timer)
      onMessage = () => {}
      resolve()
    }
  })
}

async function run (command: Command): Promise<Record<string, unknown>> {
  switch (command.cmd) {
    case 'open':
      kind = command.kind!
      clientId = command.id!
      received = 0
      frames = {}
      if (kind === 'stabilizer') await openStabilizer(command.url!, ['stabilizer.v1'])
      else await openSocketIo(command.url!, { room: command.room })
      return {}
    case 'wait':
      await until(command.count!, 10_000)
      return { received }
    case 'drop':
      if (kind === 'stabilizer') ws!.terminate()
      else socket!.io.engine.close()
      return {}
    case 'resume': {
      received = 0
      const expect = command.expect!
      const started = performance.now()
      let welcomeMs = 0
      let resume: unknown = null
      const done = until(expect, 30_000)
      if (kind === 'stabilizer') {
        const offer = encodePositions(positions)
        await openStabilizer(command.url!, ['stabilizer.v1', `stabilizer.token.${token}`, ...(offer === undefined ? [] : [`stabilizer.pos.${offer}`])], (frame) => {
          welcomeMs = performance.now() - started
          resume = frame.resume
        })
      } else {
        const previous = socket as unknown as { _pid: string, _lastOffset: string }
        const auth = { pid: previous._pid, offset: previous._lastOffset }
        socket!.close()
        await openSocketIo(command.url!, auth, () => { welcomeMs = performance.now() - started })
      }
      await done
      const ms = performance.now() - started
      return { ms, welcomeMs, received, resume }
    }
    case 'close':
      ws?.close()
      socket?.close()
      return {}
    default:
      throw new Error(`unknown command ${command.cmd}`)
  }
}

createInterface({ input: process.stdin }).on('line', (line) => {
  run(JSON.parse(line) as Command).then(print, (err: unknown) => print({ error: String(err) }))
})
process.stdin.on('end', () => {
  ws?.terminate()
  socket?.close()
  process.exit(0)
})
