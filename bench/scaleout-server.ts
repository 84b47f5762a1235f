// One instance of a scaled-out benchmark server (bench/scaleout.ts), in a process of its own:
//   node --import tsx bench/scaleout-server.ts <contender> <settings JSON>
// Prints {"port"} once listening, then answers JSON commands on stdin, one reply line each
// (from the controller, never over the sockets under test); closes when stdin ends.
import Fastify from 'fastify'
import { createServer } from 'node:http'
import { createInterface } from 'node:readline'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { Server as SocketIoServer } from 'socket.io'
import { createAdapter as pubSubAdapter } from '@socket.io/redis-adapter'
import { createAdapter as streamsAdapter } from '@socket.io/redis-streams-adapter'
import stabilizer from '../lib/index.js'
import { redisAdapter } from '../lib/adapter/redis.js'

export type ScaleoutContender = 'stabilizer' | 'stabilizer-cluster' | 'socket.io-redis' | 'socket.io-streams'

export interface ScaleoutSettings {
  /** A redis:// URL, or a Redis Cluster's startup nodes (the stabilizer only). */
  redis: string | { cluster: Array<{ host: string, port: number }> }
  /** socket.io's connection-state recovery (the resume measurement only). */
  recovery?: boolean
}

interface Instance {
  port: number
  connections: () => number
  /** Sends one text message to every client of the cluster (or of a group / room). */
  broadcast: (message: string, group?: string) => void | Promise<unknown>
  /** Adds a connected client to a group (the stabilizer; socket.io clients name their room when they connect). */
  join: (clientId: string, group: string) => boolean
  /** What this instance knows of a client (the stabilizer): connected here, its groups. */
  client: (clientId: string) => Record<string, unknown>
  /** Resolves once Redis has run every command this instance sent so far. */
  drain: () => Promise<void>
  close: () => Promise<void>
}

const host = '127.0.0.1'
const secrets = ['s'.repeat(32) + '-bench-scaleout']

async function start (name: ScaleoutContender, settings: ScaleoutSettings): Promise<Instance> {
  if (name === 'stabilizer' || name === 'stabilizer-cluster') {
    const app = Fastify()
    await app.register(stabilizer, {
      maxConnections: 100_000,
      statsRoute: false,
      secrets,
      // Position checks read every followed stream (one per connected client) on a timer of
      // their own; moved past the run so that equal windows hold equal background work.
      adapter: redisAdapter({ redis: settings.redis, keyPrefix: 'bench:', positionCheckInterval: 3_600_000 })
    })
    app.get('/ws', { websocket: true }, () => {})
    app.get('/ws/:clientId', { websocket: true }, () => {})
    await app.listen({ port: 0, host, backlog: 4096 })
    return {
      port: (app.server.address() as { port: number }).port,
      connections: () => app.stabilizer.getConnectionCount(),
      broadcast: async (message, group) => await app.stabilizer.broadcast(message, group === undefined ? {} : { group }),
      join: (clientId, group) => app.stabilizer.join(clientId, group),
      client: (clientId) => {
        const connection = app.stabilizer.getConnection(clientId)
        return { connected: connection !== undefined, state: connection?.state, groups: app.stabilizer.getGroups(clientId), buffered: connection?.socket.bufferedAmount }
      },
      drain: async () => {},
      close: async () => { await app.close() }
    }
  }
  if (typeof settings.redis !== 'string') throw new Error(`${name} runs on a single Redis`)
  const redis = new Redis(settings.redis)
  redis.on('error', () => {})
  const subscriber = redis.duplicate()
  subscriber.on('error', () => {})
  const adapter = name === 'socket.io-redis' ? pubSubAdapter(redis, subscriber) : streamsAdapter(redis)
  const server = createServer()
  const io = new SocketIoServer(server, {
    transports: ['websocket'],
    serveClient: false,
    perMessageDeflate: false,
    adapter,
    ...(settings.recovery === true ? { connectionStateRecovery: { maxDisconnectionDuration: 120_000 } } : {})
  })
  io.on('connection', (socket) => {
    const room = (socket.handshake.auth as { room?: unknown }).room
    if (typeof room === 'string' && !socket.recovered) void socket.join(room)
  })
  await new Promise<void>((resolve) => server.listen({ port: 0, host, backlog: 4096 }, resolve))
  return {
    port: (server.address() as { port: number }).port,
    connections: () => io.engine.clientsCount,
    broadcast: (message, group) => { (group === undefined ? io : io.to(group)).emit('m', message) },
    join: () => false,
    client: () => ({}),
    // Commands on one connection run in order: the answer to a PING follows every publish before it.
    drain: async () => { await redis.ping() },
    close: async () => {
      await io.close()
      redis.disconnect()
      subscriber.disconnect()
    }
  }
}

const instance = await start(process.argv[2] as ScaleoutContender, JSON.parse(process.argv[3]) as ScaleoutSettings)
const reply = (value: Record<string, unknown>): void => { process.stdout.write(`${JSON.stringify(value)}\n`) }
reply({ port: instance.port })

/** A text message of `size` bytes: its id, the monotonic send time (shared by the machine's processes), padding. */
function payload (id: number, size: number): string {
  const head = `${id} ${process.hrtime.bigint()} `
  return head + 'x'.repeat(Math.max(0, size - head.length))
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

interface Command { cmd: string, count?: number, from?: number, size?: number, spacingMs?: number, startAt?: string, perTurn?: number, inFlight?: number, group?: string, id?: string }

/** Broadcasts `count` messages, `perTurn` started per event-loop turn, at most `inFlight` unsettled. */
async function burst (count: number, from: number, size: number, perTurn: number, inFlight: number, group?: string): Promise<{ failed: number }> {
  let pending = 0
  let failed = 0
  const waiters: Array<() => void> = []
  const all: Array<Promise<unknown>> = []
  for (let i = 0; i < count; i++) {
    if (pending >= inFlight) await new Promise<void>((resolve) => waiters.push(resolve))
    const sent = instance.broadcast(payload(from + i, size), group)
    if (sent instanceof Promise) {
      pending++
      all.push(sent.then((result) => {
        if ((result as { published?: boolean } | undefined)?.published === false) failed++
      }, () => { failed++ }).finally(() => { pending--; waiters.shift()?.() }))
    }
    if ((i + 1) % perTurn === 0) await nextTurn()
  }
  await Promise.all(all)
  await instance.drain()
  return { failed }
}

async function run (command: Command): Promise<Record<string, unknown>> {
  switch (command.cmd) {
    case 'connections':
      return { connections: instance.connections() }
    case 'cpu': {
      const { user, system } = process.cpuUsage()
      return { cpuUs: user + system }
    }
    case 'paced': {
      // One broadcast every `spacingMs` from `startAt` (process.hrtime ns), on a fixed schedule.
      const startAt = BigInt(command.startAt!)
      const spacing = BigInt(Math.round(command.spacingMs! * 1e6))
      const all: Array<Promise<unknown>> = []
      let failed = 0
      for (let i = 0; i < command.count!; i++) {
        const wait = Number(startAt + BigInt(i) * spacing - process.hrtime.bigint()) / 1e6
        if (wait > 0) await sleep(wait)
        const sent = instance.broadcast(payload(command.from! + i, command.size!))
        if (sent instanceof Promise) {
          all.push(sent.then((result) => {
            if ((result as { published?: boolean } | undefined)?.published === false) failed++
          }, () => { failed++ }))
        }
      }
      await Promise.all(all)
      await instance.drain()
      return { failed }
    }
    case 'burst':
      return await burst(command.count!, command.from ?? 0, command.size!, command.perTurn ?? 4, command.inFlight ?? 64, command.group)
    case 'join':
      return { joined: instance.join(command.id!, command.group!) }
    case 'client':
      return instance.client(command.id!)
    default:
      throw new Error(`unknown command ${command.cmd}`)
  }
}

createInterface({ input: process.stdin }).on('line', (line) => {
  run(JSON.parse(line) as Command).then(reply, (err: unknown) => reply({ error: String(err) }))
})
process.stdin.on('end', () => {
  const exit = (): void => process.exit(0)
  instance.close().then(exit, exit)
})
