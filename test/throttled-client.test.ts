import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { createNamespacePair, namespacesUnavailable } from './fixtures/netns.js'
import { killProcess } from './fixtures/processes.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const serverScript = fileURLToPath(new URL('./fixtures/stabilized-server.ts', import.meta.url))
const clientScript = fileURLToPath(new URL('./fixtures/client-process.mjs', import.meta.url))

// Never skipped: a machine that cannot make namespaces fails here, saying why and how to fix it.
const unavailable = await namespacesUnavailable()
if (unavailable !== false) t.fail(unavailable)

interface ServerEvent { event: string, cause?: string, port?: number }

/**
 * The server, in its namespace, streams 16 KiB every 50 ms (2.6 Mbit/s) to one client in
 * the other namespace, through a veth whose server side is shaped by tc tbf to `rate`. The
 * server namespace gets small TCP send buffers, so that what the link cannot carry piles up
 * in ws's buffer (where the policy looks) within seconds instead of after 4 MB of kernel
 * buffering.
 */
async function streamThrough (rate: string, watchMs: number): Promise<{ events: ServerEvent[], stop: () => Promise<void> }> {
  const pair = await createNamespacePair()
  await pair.inServer('sysctl', '-q', '-w', 'net.ipv4.tcp_wmem=4096 16384 65536')
  await pair.inServer('tc', 'qdisc', 'add', 'dev', pair.serverLink, 'root', 'tbf', 'rate', rate, 'burst', '32kbit', 'latency', '400ms')
  const options = JSON.stringify({ heartbeatInterval: 0, maxBufferedAmount: 256 * 1024 })
  const server = spawn('ip', ['netns', 'exec', pair.server, process.execPath, '--import', 'tsx', serverScript, pair.serverAddress, options, String(16 * 1024), '50'], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] })
  const events: ServerEvent[] = []
  createInterface({ input: server.stdout }).on('line', (line) => { events.push(JSON.parse(line) as ServerEvent) })
  while (!events.some((e) => e.event === 'listening')) await new Promise((resolve) => setTimeout(resolve, 20))
  const port = events.find((e) => e.event === 'listening')!.port!
  const client = spawn('ip', ['netns', 'exec', pair.client, process.execPath, clientScript, `ws://${pair.serverAddress}:${port}/ws/throttled`, '1'], { stdio: ['ignore', 'pipe', 'inherit'] })
  await once(client.stdout!, 'data')
  const started = Date.now()
  while (Date.now() - started < watchMs && !events.some((e) => e.event === 'disconnect')) await new Promise((resolve) => setTimeout(resolve, 50))
  return {
    events,
    stop: async () => {
      await killProcess(client)
      await killProcess(server)
      await pair.destroy()
    }
  }
}

void t.test('a client throttled (tc tbf) below the stream rate is disconnected as a slow consumer', { skip: unavailable }, async (t) => {
  const { events, stop } = await streamThrough('1mbit', 20_000)
  t.teardown(stop)
  t.match(events.filter((e) => e.event === 'disconnect'), [{ cause: 'slow_consumer' }], 'the throttle is real: 1 Mbit/s cannot carry 2.6 Mbit/s')
})

void t.test('a client throttled (tc tbf) that keeps up with its stream is never disconnected', { skip: unavailable }, async (t) => {
  const { events, stop } = await streamThrough('4mbit', 8_000)
  t.teardown(stop)
  t.same(events.filter((e) => e.event === 'disconnect'), [], '8 s at 2.6 Mbit/s through a 4 Mbit/s link: still connected')
})
