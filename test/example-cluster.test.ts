import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { WebSocket } from 'ws'
import { StabilizedWebSocket, type ResumeOutcome } from '../lib/client/index.js'
import { startRedisServer } from './fixtures/redis-server.js'
import { waitFor } from './fixtures/server.js'

// `npm run example:cluster` as a user runs it (on a free port, with its own Redis given as
// REDIS_URL): the page's client connects through the balancer, its instance is killed, and
// the session goes on on the other instance.

void t.test('example/cluster.ts: a session moves to the other instance when its own is killed', async (t) => {
  const redis = await startRedisServer()
  t.teardown(redis.stop)
  const cluster = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('../example/cluster.ts', import.meta.url))], {
    env: { ...process.env, PORT: '0', REDIS_URL: redis.url, STABILIZER_SECRETS: 'example-cluster-test-secret-of-32-bytes-at-least' },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const instances: Array<{ pid: number, port: number }> = []
  let page = ''
  createInterface({ input: cluster.stdout! }).on('line', (line) => {
    const address = /^chat page: (http:\/\/\S+)\//.exec(line)
    if (address !== null) page = address[1]
    const instance = /^instance \d: pid (\d+), port (\d+)/.exec(line)
    if (instance !== null) instances.push({ pid: Number(instance[1]), port: Number(instance[2]) })
  })
  t.teardown(async () => {
    if (cluster.exitCode !== null) return
    const exited = once(cluster, 'exit')
    cluster.kill('SIGTERM') // stops its instances too
    await exited
  })
  await waitFor(() => page !== '' && instances.length === 2, 60_000, 50)

  const client = new StabilizedWebSocket(`${page.replace('http', 'ws')}/ws/tess`, { WebSocket, minDelay: 100, initialDelay: 300 })
  t.teardown(() => { client.close() })
  const got: string[] = []
  const resumes: ResumeOutcome[] = []
  client.addEventListener('message', (event) => { got.push(String((event as unknown as { data: unknown }).data)) })
  client.addEventListener('resumed', (event) => { resumes.push((event as unknown as { resume: ResumeOutcome }).resume) })
  await waitFor(() => client.readyState === StabilizedWebSocket.OPEN, 10_000)
  client.send('before')
  await waitFor(() => got.some((text) => text.includes('"before"')), 10_000)

  const counts = await Promise.all(instances.map(async ({ port }) => ((await (await fetch(`http://127.0.0.1:${port}/ws-stats`)).json()) as { activeConnections: number }).activeConnections))
  const holder = instances[counts.indexOf(1)]
  t.ok(holder !== undefined, 'one instance holds the client')
  process.kill(holder.pid, 'SIGKILL')
  await waitFor(() => resumes.length === 1, 20_000, 50)
  t.match(resumes[0], { outcome: 'full', stateRestored: true }, 'resumed on the other instance')
  client.send('after')
  await waitFor(() => got.some((text) => text.includes('"after"')), 10_000)
  t.pass('and the chat goes on there')
})
