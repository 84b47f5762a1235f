import t from 'tap'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { redisAdapter } from '../lib/adapter/redis.js'
import { ProtocolPeer } from './fixtures/protocol-peer.js'
import { startRedisServer } from './fixtures/redis-server.js'
import { buildApp, listen, type TestApp } from './fixtures/server.js'

// The adapter over TLS (`rediss://`) with AUTH, through ioredis: a Redis that serves TLS only,
// with a self-signed certificate made for these tests.

const tlsFile = (name: string): string => fileURLToPath(new URL(`./fixtures/tls/${name}`, import.meta.url))
const secrets = ['t'.repeat(32) + '-tls']

void t.test('TLS and AUTH: instances talk through a rediss:// Redis; an untrusted certificate fails start clearly', async (t) => {
  const redis = await startRedisServer({ password: 'tls pass', tls: { cert: tlsFile('cert.pem'), key: tlsFile('key.pem') } })
  t.teardown(redis.stop)
  t.match(redis.url, /^rediss:\/\//)

  // The URL form speaks TLS and verifies the server: this certificate is trusted by nobody.
  const untrusted = await buildApp({ secrets, adapter: redisAdapter({ redis: redis.url, connectTimeout: 3000 }) }).then(async (app) => { await app.ready(); return app }, (err: unknown) => err)
  t.ok(untrusted instanceof Error, 'start fails')
  t.match((untrusted as Error).message, /self[- ]signed|certificate/i, 'saying the certificate was refused')

  const ca = await readFile(tlsFile('cert.pem'))
  const options = { host: '127.0.0.1', port: redis.port, password: 'tls pass', tls: { ca } }
  const apps: TestApp[] = []
  const urls: string[] = []
  for (let i = 0; i < 2; i++) {
    const app = await buildApp({ secrets, heartbeatInterval: 0, adapter: redisAdapter({ redis: options, keyPrefix: 'tls:', instanceTtl: 1500 }) })
    t.teardown(async () => { await app.close() })
    apps.push(app)
    urls.push(await listen(app))
  }
  const peer = await ProtocolPeer.open(`${urls[1]}/ws/tia`)
  t.teardown(() => { peer.socket.terminate() })
  await apps[0].stabilizer.broadcast('over TLS')
  t.equal(await apps[0].stabilizer.sendToClient('tia', 'direct over TLS'), true)
  await peer.until(() => peer.messages.length === 2)
  t.same(peer.texts, ['over TLS', 'direct over TLS'], 'a broadcast and a direct send crossed instances through the TLS Redis')
})
