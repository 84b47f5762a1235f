import t from 'tap'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { once } from 'node:events'
import http from 'node:http'
import { Writable } from 'node:stream'
import stabilizer from '../lib/index.js'
import { httpUrl, listen, openClient } from './fixtures/server.js'

// A client id in the path is limited twice: by Fastify's maxParamLength (100 by default, HTTP
// 414 before any plugin runs) and by the plugin (256 characters, HTTP 400). The plugin says so.

async function appWithPathIds (t: { teardown: (fn: () => unknown) => void }, fastifyOptions: FastifyServerOptions = {}): Promise<{ app: FastifyInstance, url: string, warnings: string[] }> {
  const warnings: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) {
        const entry = JSON.parse(line) as { level: number, msg: string }
        if (entry.level === 40) warnings.push(entry.msg)
      }
      done()
    }
  })
  const app = Fastify({ logger: { level: 'warn', stream }, ...fastifyOptions })
  t.teardown(() => app.close())
  await app.register(stabilizer, { secrets: ['s'.repeat(40)] })
  app.get('/ws/:clientId', { websocket: true }, () => {})
  app.get('/other/:clientId', { websocket: true }, () => {})
  return { app, url: await listen(app), warnings }
}

/** The status and body of an upgrade request the server refuses (a real HTTP request, no client library). */
async function refusedUpgrade (url: string): Promise<{ status: number, body: string }> {
  const request = http.get(httpUrl(url), { headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' } })
  request.on('upgrade', (_response, socket) => { socket.destroy() })
  const [response] = await once(request, 'response') as [http.IncomingMessage]
  let body = ''
  for await (const chunk of response) body += String(chunk)
  return { status: response.statusCode ?? 0, body }
}

void t.test('with Fastify\'s default maxParamLength, the plugin warns once and Fastify refuses ids over 100 with 414', async (t) => {
  const { app, url, warnings } = await appWithPathIds(t)
  t.equal(warnings.filter((w) => w.includes('maxParamLength')).length, 1, 'one warning for the app, not one per route')
  t.match(warnings[0], /\/ws\/:clientId .*maxParamLength \(100\).*414.*\{ routerOptions: \{ maxParamLength: 256 \} \}/)
  const ws = await openClient(`${url}/ws/${'a'.repeat(100)}`)
  ws.terminate()
  // Injected: an upgrade refused by Fastify's router over a real socket keeps app.close()
  // waiting (with a bare @fastify/websocket too), which is not what this test is about.
  const refused = await app.inject({ url: `/ws/${'a'.repeat(101)}`, headers: { connection: 'upgrade', upgrade: 'websocket' } })
  t.equal(refused.statusCode, 414, 'Fastify\'s refusal, before the plugin runs')
  t.match(refused.json(), { code: 'FST_ERR_MAX_PARAM_LENGTH' })
})

void t.test('with maxParamLength: 256, no warning, ids up to 256 connect', async (t) => {
  const { url, warnings } = await appWithPathIds(t, { routerOptions: { maxParamLength: 256 } })
  t.same(warnings, [])
  const ws = await openClient(`${url}/ws/${'b'.repeat(256)}`)
  ws.terminate()
})

void t.test('above 256 characters the plugin refuses with 400 INVALID_CLIENT_ID where the router lets the id through', async (t) => {
  const { app, url } = await appWithPathIds(t, { routerOptions: { maxParamLength: 1000 } })
  const refused = await refusedUpgrade(`${url}/ws/${'c'.repeat(257)}`)
  t.equal(refused.status, 400)
  t.match(JSON.parse(refused.body), { code: 'FST_WS_STABILIZER_INVALID_CLIENT_ID' })
  t.match(app.stabilizer.getStats().rejectedUpgrades, { clientId: 1, identity: 0 }, 'counted under its own reason, not as an identity refusal')
})
