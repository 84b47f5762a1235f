import t from 'tap'
import Fastify from 'fastify'
import { connect } from 'node:net'
import { once } from 'node:events'
import stabilizer from '../lib/index.js'
import { listen, openClient } from './fixtures/server.js'

// Without identify or a token the upgrade is admitted in the same turn as the handshake: a
// handshake that ws then refuses must still give the slot it reserved back.
void t.test('an admitted upgrade whose handshake fails gives its slot back', async (t) => {
  const app = Fastify()
  await app.register(stabilizer, { maxConnections: 1 })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  t.teardown(() => app.close())
  const { port } = new URL(url)
  for (let i = 0; i < 3; i++) {
    const socket = connect({ host: '127.0.0.1', port: Number(port) })
    await once(socket, 'connect')
    // A key that is not 16 bytes of base64: ws answers 400 and destroys the socket.
    socket.write('GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n')
    const response: Buffer[] = []
    socket.on('data', (chunk: Buffer) => response.push(chunk))
    await once(socket, 'close')
    t.match(Buffer.concat(response).toString(), /^HTTP\/1\.1 400/, 'the handshake was refused')
  }
  const ws = await openClient(`${url}/ws`)
  t.equal(app.stabilizer.getConnectionCount(), 1, 'the slot was free')
  ws.terminate()
})
