import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { createNamespacePair, namespacesUnavailable, type NamespacePair } from './fixtures/netns.js'
import { killProcess } from './fixtures/processes.js'

const interval = 1000
const timeout = 1000
const clients = 20
const root = fileURLToPath(new URL('..', import.meta.url))
const serverScript = fileURLToPath(new URL('./fixtures/stabilized-server.ts', import.meta.url))
const clientScript = fileURLToPath(new URL('./fixtures/client-process.mjs', import.meta.url))

interface ServerEvent { event: string, id?: string, code?: number, reason?: string, t: number, port?: number }

/** The stabilized server, in the server namespace, reporting its events as JSON lines. */
function startServer (pair: NamespacePair) {
  const options = JSON.stringify({ heartbeatInterval: interval, heartbeatTimeout: timeout })
  const child = spawn('ip', ['netns', 'exec', pair.server, process.execPath, '--import', 'tsx', serverScript, pair.serverAddress, options], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] })
  const events: ServerEvent[] = []
  createInterface({ input: child.stdout }).on('line', (line) => { events.push(JSON.parse(line) as ServerEvent) })
  return { child, events }
}

async function until (condition: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms
  while (!condition()) {
    if (Date.now() > end) throw new Error('timed out waiting')
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

// Never skipped: a machine that cannot make namespaces fails here, saying why and how to fix it.
const unavailable = await namespacesUnavailable()
if (unavailable !== false) t.fail(unavailable)

const faults: Record<string, (pair: NamespacePair, clientProcess: ChildProcess) => Promise<void>> = {
  'the link goes down (ip link set … down)': async (pair) => { await pair.inClient('ip', 'link', 'set', pair.clientLink, 'down') },
  'every packet is dropped (iptables -A INPUT -j DROP)': async (pair) => { await pair.inClient('iptables', '-A', 'INPUT', '-j', 'DROP') },
  'the client process is frozen (kill -STOP)': async (_pair, clientProcess) => { clientProcess.kill('SIGSTOP') }
}

for (const [fault, cut] of Object.entries(faults)) {
  void t.test(`silent peers are terminated within interval + timeout when ${fault}`, { skip: unavailable }, async (t) => {
    const pair = await createNamespacePair()
    t.teardown(() => pair.destroy())
    const server = startServer(pair)
    t.teardown(() => killProcess(server.child))
    await until(() => server.events.some((e) => e.event === 'listening'), 20_000)
    const port = server.events.find((e) => e.event === 'listening')!.port!

    const clientProcess = spawn('ip', ['netns', 'exec', pair.client, process.execPath, clientScript, `ws://${pair.serverAddress}:${port}/ws/c{n}`, String(clients)], { stdio: ['ignore', 'pipe', 'inherit'] })
    t.teardown(() => killProcess(clientProcess))
    await once(clientProcess.stdout!, 'data')
    await until(() => server.events.filter((e) => e.event === 'connect').length === clients, 5000)
    // Let a few heartbeats go by, answered: everyone is alive before the cut.
    await new Promise((resolve) => setTimeout(resolve, 2 * interval))
    t.equal(server.events.filter((e) => e.event === 'disconnect').length, 0, 'no one dropped while the path was up')

    const cutAt = Date.now()
    await cut(pair, clientProcess)
    await until(() => server.events.filter((e) => e.event === 'disconnect').length === clients, interval + timeout + 2000)
    const delays = server.events.filter((e) => e.event === 'disconnect').map((e) => {
      t.equal(e.reason, 'heartbeat_timeout', `${e.id ?? ''} ended by the heartbeat`)
      return e.t - cutAt
    })
    t.ok(Math.max(...delays) <= interval + timeout + 250, `every silent client detected within ${interval + timeout + 250} ms (slowest ${Math.max(...delays)} ms)`)
    t.ok(Math.min(...delays) >= timeout, `none before the timeout (fastest ${Math.min(...delays)} ms)`)
  })
}
