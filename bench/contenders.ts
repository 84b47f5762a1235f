/**
 * The four contenders, each the way its users would write a broadcasting, echoing server:
 * - stabilizer: this plugin with default options (heartbeats on), `app.stabilizer.broadcast`;
 * - fastify-websocket: raw @fastify/websocket, sockets kept in a Set, a plain send loop;
 * - ws: a raw WebSocketServer, a plain send loop over `wss.clients`;
 * - socket.io: a socket.io server (websocket transport only), `io.emit`.
 */
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import { createServer } from 'node:http'
import { Server as SocketIoServer } from 'socket.io'
import { WebSocketServer, type WebSocket } from 'ws'
import stabilizer, { type StabilizerOptions } from '../lib/index.js'

export const contenderNames = ['stabilizer', 'fastify-websocket', 'ws', 'socket.io'] as const
export type ContenderName = (typeof contenderNames)[number]

/**
 * How a contender is configured beyond its defaults (bench/server.ts's third argument, JSON):
 * `stabilizer` options are merged into the stabilizer's; `perMessageDeflate` is handed to the
 * raw contenders' ws / engine.io servers (`true` or ws's options object).
 */
export interface ContenderSettings {
  stabilizer?: StabilizerOptions
  perMessageDeflate?: boolean | Record<string, unknown>
  /** The listen backlog (Node's default is 511; a storm's burst of SYNs overflows it). */
  backlog?: number
}

export interface Contender {
  port: number
  connections: () => number
  /** Sends one text message to every client; resolves when the server is done sending. */
  broadcast: (message: string) => void | Promise<unknown>
  close: () => Promise<void>
}

const host = '127.0.0.1'

function echo (socket: WebSocket): void {
  socket.on('message', (data, isBinary) => { socket.send(data, { binary: isBinary }) })
}

/**
 * `stabilizer-metrics` (bench/metrics.ts only): the stabilizer with `metrics: true`, scraped
 * once a second in-process (`inject`), fifteen times Prometheus' default rate.
 */
export type BenchServerName = ContenderName | 'stabilizer-metrics'

export async function startContender (name: BenchServerName, settings: ContenderSettings = {}): Promise<Contender> {
  const perMessageDeflate = settings.perMessageDeflate ?? false
  const listen = { port: 0, host, backlog: settings.backlog }
  if (name === 'stabilizer' || name === 'stabilizer-metrics') {
    const metrics = name === 'stabilizer-metrics'
    const app = Fastify()
    await app.register(stabilizer, { maxConnections: 100_000, statsRoute: false, metrics, ...settings.stabilizer })
    app.get('/ws', { websocket: true }, echo)
    await app.listen(listen)
    const scraper = metrics ? setInterval(() => { void app.inject('/metrics') }, 1000).unref() : undefined
    return {
      port: (app.server.address() as { port: number }).port,
      connections: () => app.stabilizer.getConnectionCount(),
      broadcast: async (message) => await app.stabilizer.broadcast(message),
      close: async () => {
        clearInterval(scraper)
        await app.close()
      }
    }
  }
  if (name === 'fastify-websocket') {
    const app = Fastify()
    await app.register(websocket, { options: { perMessageDeflate } })
    const sockets = new Set<WebSocket>()
    app.get('/ws', { websocket: true }, (socket) => {
      sockets.add(socket)
      socket.on('close', () => sockets.delete(socket))
      echo(socket)
    })
    await app.listen(listen)
    return {
      port: (app.server.address() as { port: number }).port,
      connections: () => sockets.size,
      broadcast: (message) => { for (const socket of sockets) socket.send(message) },
      close: async () => { await app.close() }
    }
  }
  if (name === 'ws') {
    const wss = new WebSocketServer({ ...listen, perMessageDeflate })
    await new Promise((resolve) => wss.once('listening', resolve))
    wss.on('connection', (socket) => { socket.on('error', () => {}); echo(socket) })
    return {
      port: (wss.address() as { port: number }).port,
      connections: () => wss.clients.size,
      broadcast: (message) => { for (const socket of wss.clients) socket.send(message) },
      close: async () => {
        for (const socket of wss.clients) socket.terminate()
        await new Promise((resolve) => wss.close(resolve))
      }
    }
  }
  const server = createServer()
  const io = new SocketIoServer(server, { transports: ['websocket'], serveClient: false, perMessageDeflate })
  io.on('connection', (socket) => { socket.on('e', (data: unknown) => socket.emit('e', data)) })
  await new Promise<void>((resolve) => server.listen(listen, resolve))
  return {
    port: (server.address() as { port: number }).port,
    connections: () => io.engine.clientsCount,
    broadcast: (message) => { io.emit('m', message) },
    close: async () => { await io.close() }
  }
}
