import t from 'tap'
import Fastify from 'fastify'
import { once } from 'node:events'
import stabilizer from '../lib/index.js'
import { listen, openClient } from './fixtures/server.js'
import { sendUpgradeRequest } from './fixtures/raw-peer.js'

// Without identify or a token the upgrade is admitted in the same turn as the handshake: a
// handshake that ws then refuses must still give the slot it reserved back.
void t.test('an admitted upgrade whose handshake fails gives its slot back', async (t) => {
  const app = Fastify()
  await app.register(stabilizer, { maxConnections: 1 })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  t.teardown(() => app.close())
  for (let i = 0; i < 3; i++) {
    // A key that is not 16 bytes of base64: ws answers 400 and destroys the socket.
    const socket = await sendUpgradeRequest(url, '/ws', { key: 'short' })
    const response: Buffer[] = []
    socket.on('data', (chunk: Buffer) => response.push(chunk))
    await once(socket, 'close')
    t.match(Buffer.concat(response).toString(), /^HTTP\/1\.1 400/, 'the handshake was refused')
  }
  const ws = await openClient(`${url}/ws`)
  t.equal(app.stabilizer.getConnectionCount(), 1, 'the slot was free')
  ws.terminate()
})
