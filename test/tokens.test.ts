import t from 'tap'
import fc from 'fast-check'
import Fastify from 'fastify'
import { Writable } from 'node:stream'
import stabilizer, { InvalidTokenError, TokenExpiredError } from '../lib/index.js'
import { TokenSigner, maxTokenLength } from '../lib/tokens.js'
import { MemoryHub } from '../lib/adapter/memory.js'
import { buildApp, listen, openClient, waitFor } from './fixtures/server.js'

const secretA = 'a'.repeat(32) + '-first-secret-for-tests'
const secretB = 'b'.repeat(32) + '-second-secret-for-tests'

void t.test('a token round-trips its claims; any client id works', async (t) => {
  const signer = new TokenSigner([secretA])
  for (const clientId of ['alice', 'with.dots.and:colons', 'ünï·cødé 🎉', 'x'.repeat(256), '..', '.a.b.']) {
    const { token, claims } = signer.sign(clientId, 'session-1', 60_000, 1_000_000)
    t.match(token, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$/, 'URL-safe')
    t.same(signer.verify(token, 1_000_001), claims)
    t.equal(claims.cid, clientId)
  }
})

void t.test('malformed tokens are refused as InvalidTokenError', async (t) => {
  const signer = new TokenSigner([secretA])
  const { token } = signer.sign('alice', 's', 60_000)
  const [payload, signature] = token.split('.')
  const cases: Array<[string, unknown]> = [
    ['empty', ''],
    ['not a string', 42],
    ['no dot', payload],
    ['empty payload', `.${signature}`],
    ['two dots', `${payload}.${signature}.x`],
    ['non-base64url', `${payload}!.${signature}`],
    ['short signature', `${payload}.${signature.slice(1)}`],
    ['oversized', `${'A'.repeat(maxTokenLength)}.${signature}`],
    ['payload not JSON', `${Buffer.from('nope').toString('base64url')}.${signature}`],
    ['payload JSON null', `${Buffer.from('null').toString('base64url')}.${signature}`],
    ['claims missing', `${Buffer.from('{"cid":"a"}').toString('base64url')}.${signature}`]
  ]
  for (const [name, value] of cases) t.throws(() => signer.verify(value), InvalidTokenError, name)
})

void t.test('flipping any single bit of a real token is refused', async (t) => {
  const signer = new TokenSigner([secretA])
  const { token } = signer.sign('alice', 'session', 60_000)
  const bytes = Buffer.from(token)
  let refused = 0
  for (let i = 0; i < bytes.length * 8; i++) {
    const tampered = Buffer.from(bytes)
    tampered[i >> 3] ^= 1 << (i & 7)
    try {
      signer.verify(tampered.toString('latin1'))
    } catch (err) {
      if (err instanceof InvalidTokenError) refused++
    }
  }
  t.equal(refused, bytes.length * 8, `all ${bytes.length * 8} single-bit changes refused`)
})

void t.test('expired, not yet valid, unknown key; rotation: the first secret signs, all verify', async (t) => {
  const now = 10_000_000
  const signer = new TokenSigner([secretA])
  const { token } = signer.sign('alice', 's', 60_000, now)
  t.throws(() => signer.verify(token, now + 60_000), TokenExpiredError, 'expired at exp')
  t.throws(() => signer.verify(token, now - 60_000), InvalidTokenError, 'not yet valid')
  t.ok(signer.verify(token, now - 4_000), 'within the clock skew')
  t.throws(() => new TokenSigner([secretB]).verify(token, now), InvalidTokenError, 'another key')
  const rotated = new TokenSigner([secretB, secretA])
  t.equal(rotated.verify(token, now).cid, 'alice', 'old tokens still verify after rotation')
  const fresh = rotated.sign('bob', 's', 60_000, now).token
  t.throws(() => signer.verify(fresh, now), InvalidTokenError, 'the old signer does not know the new key')
  t.throws(() => new TokenSigner([]), RangeError)
})

void t.test('property: the parser throws nothing but the two documented errors', async (t) => {
  const signer = new TokenSigner([secretA])
  const { token } = signer.sign('alice', 's', 60_000)
  const mutated = fc.tuple(fc.nat({ max: token.length - 1 }), fc.string({ maxLength: 4 })).map(([at, insert]) => token.slice(0, at) + insert + token.slice(at + 1))
  fc.assert(fc.property(fc.oneof(fc.string(), fc.string({ unit: 'binary' }), mutated, fc.base64String(), fc.anything()), (input) => {
    try {
      signer.verify(input)
    } catch (err) {
      if (!(err instanceof InvalidTokenError) && !(err instanceof TokenExpiredError)) throw err
    }
  }), { numRuns: 5000 })
  t.pass('5000 random inputs')
})

void t.test('the redemption store: once per token, forgets expired ids, fails closed when full', async (t) => {
  const store = new MemoryHub(2)
  t.equal(store.redeemToken('a', Date.now() + 60_000), true)
  t.equal(store.redeemToken('a', Date.now() + 60_000), false, 'replay')
  t.equal(store.redeemToken('old', Date.now() - 1), true)
  t.equal(store.redeemToken('b', Date.now() + 60_000), true, 'the expired id made room')
  t.equal(store.redeemedTokens, 2)
  t.equal(store.redeemToken('c', Date.now() + 60_000), false, 'full of live ids: refused, not forgotten')
})

void t.test('validateReconnectToken redeems: a token is valid once; another instance with the same secrets accepts it', async (t) => {
  const a = await buildApp({ secrets: [secretA] })
  const b = await buildApp({ secrets: [secretB, secretA] })
  t.teardown(async () => { await a.close(); await b.close() })
  const url = await listen(a)
  const ws = await openClient(`${url}/ws/carol`)
  await waitFor(() => a.stabilizer.getConnectionCount() === 1)
  const first = a.stabilizer.generateReconnectToken('carol')
  t.equal(await a.stabilizer.validateReconnectToken(first), 'carol')
  await t.rejects(a.stabilizer.validateReconnectToken(first), InvalidTokenError, 'second use')
  const second = a.stabilizer.generateReconnectToken('carol')
  t.equal(await b.stabilizer.validateReconnectToken(second), 'carol', 'minted on A, valid on B')
  t.throws(() => a.stabilizer.generateReconnectToken('nobody'), { code: 'FST_WS_STABILIZER_CONNECTION_NOT_FOUND' })
  ws.terminate()
})

void t.test('options: short secrets fail; no secret logs a warning; enableReconnect false turns tokens off', async (t) => {
  const short = await buildApp({ secrets: ['too short'] }).then(() => undefined, (e: unknown) => e)
  t.match(short, { code: 'FST_WS_STABILIZER_INVALID_OPTION', message: /secrets\.0.*32 bytes/ })
  const useless = await buildApp({ enableReconnect: false, secrets: [secretA] }).then(() => undefined, (e: unknown) => e)
  t.match(useless, { code: 'FST_WS_STABILIZER_INVALID_OPTION', message: /secrets.*enableReconnect/ })

  const lines: string[] = []
  const app = Fastify({ logger: { level: 'warn', stream: new Writable({ write (chunk, _e, done) { lines.push(String(chunk)); done() } }) } })
  await app.register(stabilizer)
  t.match(lines.join(''), /no `secrets` configured/)
  await app.close()

  const off = await buildApp({ enableReconnect: false })
  t.teardown(() => off.close())
  t.throws(() => off.stabilizer.generateReconnectToken('x'), { code: 'FST_WS_STABILIZER_ERROR', message: /disabled/ })
  await t.rejects(off.stabilizer.validateReconnectToken('x.y'), { message: /disabled/ })
})
