// A benchmark client process: node bench/clients.mjs <contender> <url> <count>
// Opens <count> connections at once (ws, or socket.io-client for socket.io), reports
// {"event":"open","ms","opened","failures"}, then answers JSON commands on stdin:
//   {"cmd":"report"}  latency of every broadcast received since the last report, per id
//   {"cmd":"count"}   deliveries since the last report and the time of the last one
//   {"cmd":"echo","sockets":N,"count":M}  round trips of M sequential echoes on N sockets
//   {"cmd":"flood","sockets":N,"count":M,"window":W}  M echoes per socket on N sockets, W in
//     flight per socket: the time until every echo came back (ws contenders only)
// Latencies use process.hrtime (CLOCK_MONOTONIC, shared by all processes of the machine).
import { createInterface } from 'node:readline'
import { WebSocket } from 'ws'
import { io } from 'socket.io-client'

const [contender, url, countArg] = process.argv.slice(2)
const count = Number(countArg)
const isSocketIo = contender === 'socket.io'
const print = (value) => process.stdout.write(`${JSON.stringify(value)}\n`)

/** Per broadcast id: [max latency in ns, deliveries]. */
let received = new Map()
let total = 0
let lastAt = 0n

function onBroadcast (text) {
  const now = process.hrtime.bigint()
  const space = text.indexOf(' ')
  const id = Number(text.slice(0, space))
  const sentAt = BigInt(text.slice(space + 1, text.indexOf(' ', space + 1)))
  const latency = now - sentAt
  const entry = received.get(id)
  if (entry === undefined) received.set(id, [latency, 1])
  else {
    if (latency > entry[0]) entry[0] = latency
    entry[1]++
  }
  total++
  lastAt = now
}

const sockets = []
let echoWaiter = null
const started = performance.now()
let opened = 0
let failures = 0
let settled = 0
function settle (ok) {
  if (ok) opened++
  else failures++
  if (++settled === count) print({ event: 'open', ms: performance.now() - started, opened, failures })
}

for (let i = 0; i < count; i++) {
  if (isSocketIo) {
    const socket = io(url, { transports: ['websocket'], reconnection: false, forceNew: true })
    socket.once('connect', () => settle(true))
    socket.once('connect_error', () => settle(false))
    socket.on('m', onBroadcast)
    socket.on('e', (data) => echoWaiter?.(data))
    sockets.push({ send: (text) => socket.emit('e', text), close: () => socket.close() })
  } else {
    const socket = new WebSocket(url)
    socket.once('open', () => settle(true))
    socket.once('error', () => { if (socket.readyState !== WebSocket.OPEN) settle(false) })
    socket.on('message', (data) => {
      const text = data.toString()
      if (text.startsWith('echo ')) {
        if (entry.onEcho !== null) entry.onEcho()
        else echoWaiter?.(text)
      } else onBroadcast(text)
    })
    const entry = { send: (text) => socket.send(text), close: () => socket.terminate(), onEcho: null }
    sockets.push(entry)
  }
}

/** Echo throughput: every socket keeps `window` echoes in flight until `perSocket` came back. */
async function flood (socketCount, perSocket, window) {
  const started = performance.now()
  await Promise.all(sockets.slice(0, socketCount).map((entry) => new Promise((resolve) => {
    let sent = 0
    let back = 0
    const send = () => { sent++; entry.send(`echo ${sent}`) }
    entry.onEcho = () => {
      if (++back === perSocket) { entry.onEcho = null; resolve() } else if (sent < perSocket) send()
    }
    while (sent < Math.min(window, perSocket)) send()
  })))
  return { ms: performance.now() - started, echoes: socketCount * perSocket }
}

async function echo (socketCount, perSocket) {
  const rtts = []
  for (let s = 0; s < socketCount; s++) {
    const socket = sockets[Math.floor((s * sockets.length) / socketCount)]
    for (let m = 0; m < perSocket; m++) {
      const sent = process.hrtime.bigint()
      await new Promise((resolve) => { echoWaiter = resolve; socket.send(`echo ${m}`) })
      rtts.push(Number(process.hrtime.bigint() - sent) / 1e6)
    }
  }
  echoWaiter = null
  rtts.sort((a, b) => a - b)
  return { p50: rtts[Math.floor(rtts.length * 0.5)], p99: rtts[Math.min(rtts.length - 1, Math.floor(rtts.length * 0.99))] }
}

createInterface({ input: process.stdin }).on('line', (line) => {
  const command = JSON.parse(line)
  if (command.cmd === 'report') {
    print({ ids: [...received].map(([id, [latency, deliveries]]) => [id, Number(latency) / 1e6, deliveries]), total, lastAt: String(lastAt) })
    received = new Map()
    total = 0
  } else if (command.cmd === 'count') {
    print({ total, lastAt: String(lastAt) })
  } else if (command.cmd === 'echo') {
    echo(command.sockets, command.count).then(print)
  } else if (command.cmd === 'flood') {
    flood(command.sockets, command.count, command.window).then(print)
  }
})
process.stdin.on('end', () => {
  for (const socket of sockets) socket.close()
  process.exit(0)
})
