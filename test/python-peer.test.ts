import t from 'tap'
import { once } from 'node:events'
import { buildChatApp } from '../example/app.js'
import { listen, waitFor } from './fixtures/server.js'
import { startPythonClient } from './fixtures/python-peer.js'
import { requirePrerequisites } from './fixtures/requires.js'

const missing = await requirePrerequisites(t, 'python3-websockets')

void t.test('a Python websockets client gets a broadcast and 1012 with its reason at shutdown', { skip: missing }, async (t) => {
  const app = await buildChatApp({}, { logger: false })
  const url = await listen(app)
  const python = startPythonClient(`${url}/ws/py`)
  t.teardown(() => { python.child.kill('SIGKILL') })
  t.same(await python.next(), { event: 'open' })
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  t.equal(app.stabilizer.getActiveConnections()[0], 'py')
  const result = await app.stabilizer.broadcast({ from: 'server', text: 'hello python' })
  t.equal(result.sent, 1)
  const message = await python.next()
  t.same(JSON.parse(message.data!), { from: 'server', text: 'hello python' })
  await app.close()
  const close = await python.next()
  t.equal(close.event, 'close')
  t.equal(close.code, 1012)
  t.match(close.reason, /^service restart; retry-after-ms=\d+$/)
  if (python.child.exitCode === null) await once(python.child, 'exit')
  t.equal(python.child.exitCode, 0)
})

void t.test('a Python websockets client with its own keepalive stays across 20+ server intervals, and is detected when frozen', { skip: missing }, async (t) => {
  const interval = 200
  const timeout = 200
  const gone: Array<{ reason: string, at: number }> = []
  const app = await buildChatApp({ heartbeatInterval: interval, heartbeatTimeout: timeout, onDisconnect: (_c, _code, reason) => { gone.push({ reason, at: performance.now() }) } }, { logger: false })
  const url = await listen(app)
  t.teardown(() => app.close())
  // Both sides ping: the client every 150 ms with a 1 s timeout of its own.
  const python = startPythonClient(`${url}/ws/keepalive`, 0.15, 1)
  t.teardown(() => { python.child.kill('SIGKILL') })
  t.same(await python.next(), { event: 'open' })
  await new Promise((resolve) => setTimeout(resolve, 22 * interval))
  t.same(gone, [], 'still connected after 22 server intervals')
  const { heartbeat } = app.stabilizer.getStats()
  t.ok(heartbeat.pingsSent >= 20, `${heartbeat.pingsSent} server pings`)
  t.ok(heartbeat.pongsReceived >= 20, `${heartbeat.pongsReceived} answered by the Python client`)
  t.equal(heartbeat.timeouts, 0)

  const frozenAt = performance.now()
  python.child.kill('SIGSTOP')
  await waitFor(() => gone.length === 1, 3000)
  const detectedAfter = gone[0].at - frozenAt
  t.equal(gone[0].reason, 'heartbeat_timeout')
  t.ok(detectedAfter <= interval + timeout + 250, `frozen client detected after ${Math.round(detectedAfter)} ms`)
  python.child.kill('SIGCONT')
})
