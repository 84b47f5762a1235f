// The chat of example/chat.ts as a cluster: two instances sharing a Redis, behind a small
// TCP load balancer on PORT (default 3000) that sends each new connection to the next live
// instance. Open the page, then kill an instance (its pid is logged): the page reconnects
// through the balancer to the other one and resumes its session there.
//
//   REDIS_URL=redis://127.0.0.1:6379 npm run example:cluster
//
// Without REDIS_URL it starts a redis-server of its own (no persistence) on a free port and
// stops it on exit. Every instance gets the same secrets (STABILIZER_SECRETS, or the example's
// development secret), as production instances must.
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { redisAdapter } from '../lib/adapter/redis.js'
import { buildChatApp } from './app.js'
import { loadSecrets } from './dev-secret.js'

const instances = 2

if (process.env.CLUSTER_INSTANCE !== undefined) await runInstance()
else await runCluster()

/** One instance: the chat app with the Redis adapter, on a port of the kernel's choice. */
async function runInstance (): Promise<void> {
  const app = await buildChatApp({ secrets: await loadSecrets(), adapter: redisAdapter({ redis: process.env.REDIS_URL! }) })
  await app.listen({ port: 0, host: '127.0.0.1' })
  process.stdout.write(`${JSON.stringify({ clusterInstanceListening: (app.server.address() as { port: number }).port })}\n`)
  process.once('SIGTERM', () => { void app.close().then(() => process.exit(0)) })
}

async function runCluster (): Promise<void> {
  const redis = process.env.REDIS_URL === undefined ? await startRedis() : undefined
  const redisUrl = process.env.REDIS_URL ?? redis!.url
  const secrets = await loadSecrets()
  const children: ChildProcess[] = []
  const ports: number[] = []
  for (let i = 0; i < instances; i++) {
    const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url)], {
      env: { ...process.env, CLUSTER_INSTANCE: String(i), REDIS_URL: redisUrl, STABILIZER_SECRETS: secrets.join(',') },
      stdio: ['ignore', 'pipe', 'inherit']
    })
    children.push(child)
    // The instance's logs go on to this process's stdout; one line says where it listens.
    const listening = new Promise<number>((resolve, reject) => {
      child.once('exit', (code) => { reject(new Error(`instance ${i} exited (${String(code)})`)) })
      createInterface({ input: child.stdout! }).on('line', (line) => {
        const port = line.startsWith('{"clusterInstanceListening"') ? (JSON.parse(line) as { clusterInstanceListening: number }).clusterInstanceListening : undefined
        if (port === undefined) process.stdout.write(`${line}\n`)
        else resolve(port)
      })
    })
    ports.push(await listening)
  }
  const balancer = await startBalancer(ports, Number(process.env.PORT ?? 3000))
  const url = `http://127.0.0.1:${(balancer.address() as { port: number }).port}`
  console.log(`chat page: ${url}/  —  stats: ${url}/ws-stats  —  Redis: ${redisUrl}`)
  children.forEach((child, i) => { console.log(`instance ${i}: pid ${String(child.pid)}, port ${ports[i]} (kill it to watch sessions move)`) })

  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      balancer.close()
      void Promise.all(children.map(async (child) => {
        if (child.exitCode !== null || child.signalCode !== null) return
        const exited = once(child, 'exit')
        child.kill('SIGTERM')
        await exited
      })).then(async () => { await redis?.stop() }).then(() => process.exit(0))
    })
  }
}

/** Round robin over the instances; one that refuses (killed, restarting) is skipped. */
async function startBalancer (backends: number[], port: number): Promise<Server> {
  let next = 0
  const server = createServer((client) => {
    client.on('error', () => {})
    client.pause()
    const attempt = (tried: number): void => {
      if (tried === backends.length) { client.destroy(); return }
      const upstream = connect(backends[next++ % backends.length], '127.0.0.1')
      let connected = false
      upstream.once('connect', () => {
        connected = true
        upstream.pipe(client).on('error', () => {})
        client.pipe(upstream)
        client.resume()
      })
      upstream.on('error', () => { if (connected) client.destroy(); else attempt(tried + 1) })
      upstream.on('close', () => client.destroy())
      client.on('close', () => upstream.destroy())
    }
    attempt(0)
  })
  server.listen(port, '127.0.0.1')
  await once(server, 'listening')
  return server
}

/** A redis-server of the example's own: a free port, a temp dir, nothing saved. */
async function startRedis (): Promise<{ url: string, stop: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'chat-cluster-redis-'))
  const probe = createServer().listen(0, '127.0.0.1')
  await once(probe, 'listening')
  const port = (probe.address() as { port: number }).port
  probe.close()
  const child = spawn(process.env.REDIS_SERVER ?? 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  child.once('error', (err) => { console.error(`redis-server could not start (${err.message}): install it or set REDIS_URL`); process.exit(1) })
  for (let i = 0; ; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1', () => { socket.destroy(); resolve(true) })
      socket.once('error', () => resolve(false))
    })
    if (up) break
    if (i === 250) throw new Error(`redis-server did not listen on ${port}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: async () => {
      if (child.exitCode === null) {
        const exited = once(child, 'exit')
        child.kill('SIGKILL')
        await exited
      }
      await rm(dir, { recursive: true, force: true })
    }
  }
}
