import t from 'tap'
import Fastify from 'fastify'
import fastifyMetricsModule from 'fastify-metrics'
import { Registry } from 'prom-client'
import stabilizer, { type StabilizerOptions } from '../lib/index.js'
import { closeCodeLabel } from '../lib/metrics.js'
import { setupMetrics } from '../lib/metrics-route.js'
import { resolveOptions, type ResolvedMetricsOptions } from '../lib/options.js'
import { buildApp, closeOf, httpUrl, listen, openClient, refusal, waitFor } from './fixtures/server.js'
import { openRawPeer } from './fixtures/raw-peer.js'
import { ProtocolPeer } from './fixtures/protocol-peer.js'
import { promtool, scrape } from './fixtures/prometheus.js'

const p = 'websocket_stabilizer_'
// fastify-metrics is CommonJS with an `exports.default`: Node's ESM import sees the exports object.
const fastifyMetrics = fastifyMetricsModule.default

async function metricsApp (t: { teardown: (fn: () => unknown) => void }, options: StabilizerOptions) {
  const app = await buildApp(options)
  t.teardown(async () => await app.close())
  const url = await listen(app)
  return { app, url, metricsUrl: `${httpUrl(url)}/metrics` }
}

void t.test('metrics off (the default): no route, no recorder', async (t) => {
  const { app, url } = await metricsApp(t, {})
  t.equal(app.stabilizer.metrics, undefined)
  t.equal((await fetch(`${httpUrl(url)}/metrics`)).status, 404)
})

void t.test('GET /metrics after real traffic: connections, messages, broadcasts, RTT, closes by code and cause, refusals', async (t) => {
  const { app, url, metricsUrl } = await metricsApp(t, { metrics: { groups: ['room', 'quiet'] }, heartbeatInterval: 100, maxConnections: 2 })
  const ada = await openClient(`${url}/ws/ada`)
  const bob = await openClient(`${url}/ws/bob`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 2)
  t.equal((await refusal(`${url}/ws/cyd`)).statusCode, 503, 'a third client is refused at maxConnections')

  for (let i = 0; i < 3; i++) ada.send('hello')
  await waitFor(() => app.received.get('ada')?.length === 3)
  app.stabilizer.join('bob', 'room')
  let bobReceived = 0
  bob.on('message', () => { bobReceived++ })
  await app.stabilizer.broadcast('x'.repeat(10))
  await app.stabilizer.broadcast('y'.repeat(10), { group: 'room' })
  t.equal(await app.stabilizer.sendToClient('bob', 'zz'), true)
  await waitFor(() => bobReceived === 3)
  await waitFor(() => app.stabilizer.getStats().heartbeat.pongsReceived >= 4)

  let s = await scrape(metricsUrl)
  t.equal(s.value(`${p}connections`), 2)
  t.equal(s.value(`${p}connections_opened_total`, { resumed: 'false' }), 2)
  t.equal(s.value(`${p}upgrades_rejected_total`, { reason: 'connection_limit' }), 1)
  t.equal(s.value(`${p}upgrades_rejected_total`, { reason: 'origin' }), 0, 'every reason has a series from the start')
  t.equal(s.value(`${p}messages_received_total`), 3)
  t.equal(s.value(`${p}received_bytes_total`), 15)
  t.equal(s.value(`${p}messages_sent_total`), 2 + 1 + 1, 'two recipients, one group member, one direct send')
  t.equal(s.value(`${p}sent_bytes_total`), 20 + 10 + 2)
  t.equal(s.value(`${p}broadcast_duration_seconds_count`, { scope: 'all' }), 1)
  t.equal(s.value(`${p}broadcast_duration_seconds_count`, { scope: 'group' }), 1)
  t.equal(s.value(`${p}groups`), 1)
  t.equal(s.value(`${p}group_memberships`), 1)
  t.equal(s.value(`${p}group_members`, { group: 'room' }), 1, 'a group named in the option')
  t.equal(s.value(`${p}group_members`, { group: 'quiet' }), 0)
  t.equal([...s.series.keys()].filter((key) => key.startsWith(`${p}group_members{`)).length, 2, 'no other group becomes a label')
  t.ok((s.value(`${p}heartbeat_rtt_seconds_count`) ?? 0) >= 4, 'RTT samples after heartbeats')
  t.equal(s.value(`${p}heartbeat_rtt_seconds_count`), s.value(`${p}heartbeat_pongs_total`), 'one sample per measured pong')
  t.ok((s.value(`${p}heartbeat_rtt_seconds_bucket`, { le: '+Inf' }) ?? 0) >= 4)
  t.ok((s.value(`${p}heartbeat_pings_total`) ?? 0) >= 4)
  t.equal(s.value(`${p}state`, { state: 'running' }), 1)
  t.equal(s.value(`${p}build_info`, { version: '0.1.0' }), 1)
  t.notOk(s.has(`${p}shutdown_duration_seconds`), 'no shutdown yet: no sample')
  t.notOk(s.has(`${p}adapter_connected`), 'the in-process adapter has no store to reach')

  const adaClosed = closeOf(ada)
  ada.close(4100, 'bye')
  await adaClosed
  await app.stabilizer.disconnect('bob', 1000)
  await waitFor(() => app.stabilizer.getConnectionCount() === 0)
  s = await scrape(metricsUrl)
  t.equal(s.value(`${p}connections`), 0)
  t.equal(s.value(`${p}close_codes_total`, { code: '4000-4499' }), 1, 'an undocumented application code is bucketed by its range')
  t.equal(s.value(`${p}close_codes_total`, { code: '1000' }), 1)
  t.equal(s.value(`${p}close_codes_total`, { code: '4500' }), 0, 'documented codes have a series from the start')
  t.equal(s.value(`${p}connections_closed_total`, { cause: 'client_closed' }), 1)
  t.equal(s.value(`${p}connections_closed_total`, { cause: 'server_disconnect' }), 1)
  t.equal(s.value(`${p}connections_closed_total`, { cause: 'heartbeat_timeout' }), 0)
  t.equal(s.value(`${p}connection_duration_seconds_count`), 2)
  t.equal(s.value(`${p}group_memberships`), 0)
})

void t.test('a slow consumer: drops by reason, buffered bytes and slow consumers now', async (t) => {
  const cap = 64 * 1024
  const { app, url, metricsUrl } = await metricsApp(t, { metrics: true, maxBufferedAmount: cap, slowConsumerPolicy: 'drop' })
  const stalled = await openRawPeer(url, '/ws/stalled')
  t.teardown(() => stalled.destroy())
  stalled.socket.pause() // stops reading: the kernel buffers fill, then ws's
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const chunk = Buffer.alloc(32 * 1024, 1)
  let dropped = 0
  for (let i = 0; i < 2000 && dropped < 3; i++) {
    dropped += (await app.stabilizer.broadcast(chunk)).dropped
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.ok(dropped >= 3, `${dropped} broadcasts dropped for the stalled reader`)
  const s = await scrape(metricsUrl)
  t.equal(s.value(`${p}messages_dropped_total`, { reason: 'slow_consumer' }), app.stabilizer.getStats().protection.slowConsumerDrops)
  t.equal(s.value(`${p}messages_dropped_total`, { reason: 'slow_consumer' }), dropped)
  t.equal(s.value(`${p}messages_dropped_total`, { reason: 'rate_limit' }), 0)
  t.equal(s.value(`${p}slow_consumers`), 1)
  const buffered = app.stabilizer.getConnection('stalled')!.socket.bufferedAmount
  t.ok(buffered > 0)
  t.equal(s.value(`${p}send_buffer_bytes`), buffered)
  t.equal(s.value(`${p}send_buffer_max_bytes`), buffered)
})

void t.test('inbound drops: over the rate limit and over maxMessageSize', async (t) => {
  const { app, url, metricsUrl } = await metricsApp(t, { metrics: true, inboundMessageRate: 2, rateLimitPolicy: 'drop', maxMessageSize: 1024 })
  const fast = await openClient(`${url}/ws/fast`)
  for (let i = 0; i < 10; i++) fast.send('m')
  await waitFor(() => app.stabilizer.getStats().protection.inboundDropped >= 1)
  const big = await openClient(`${url}/ws/big`)
  const closed = closeOf(big)
  big.send(Buffer.alloc(2048))
  t.equal((await closed).code, 1009)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const s = await scrape(metricsUrl)
  const { inboundDropped } = app.stabilizer.getStats().protection
  t.equal(s.value(`${p}messages_dropped_total`, { reason: 'rate_limit' }), inboundDropped)
  t.equal(s.value(`${p}messages_received_total`), 10 - inboundDropped, 'a dropped message never reached the listeners')
  t.equal(s.value(`${p}messages_dropped_total`, { reason: 'too_large' }), 1)
  t.equal(s.value(`${p}close_codes_total`, { code: '1009' }), 1)
  fast.terminate()
})

void t.test('resumes: by outcome, resumed connections, and a refused token', async (t) => {
  const { app, url, metricsUrl } = await metricsApp(t, { metrics: true })
  const first = await openClient(`${url}/ws/dana`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  app.stabilizer.setUserData('dana', 'cart', [1, 2])
  const token = app.stabilizer.generateReconnectToken('dana')
  first.terminate()
  await waitFor(() => app.stabilizer.getConnectionCount() === 0 && app.stabilizer.getMemoryUsage().retainedSessions === 1)
  let s = await scrape(metricsUrl)
  t.equal(s.value(`${p}retained_sessions`), 1)
  t.ok((s.value(`${p}retained_session_bytes`) ?? 0) > 0)

  const second = await openClient(`${url}/ws/dana?token=${token}`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  t.equal((await refusal(`${url}/ws/dana?token=${token}`)).statusCode, 401, 'a token is valid once')
  t.equal((await refusal(`${url}/ws/dana?token=garbage`)).statusCode, 401)
  s = await scrape(metricsUrl)
  t.equal(s.value(`${p}resumes_total`, { result: 'none', state_restored: 'true' }), 1, 'a plain client: state restored, no replay')
  t.equal(s.value(`${p}resumes_total`, { result: 'rejected', state_restored: 'false' }), 2)
  t.equal(s.value(`${p}resumes_total`, { result: 'full', state_restored: 'true' }), 0)
  t.equal(s.value(`${p}connections_opened_total`, { resumed: 'true' }), 1)
  t.equal(s.value(`${p}connections_opened_total`, { resumed: 'false' }), 1)
  t.equal(s.value(`${p}retained_sessions`), 0)
  t.ok((s.value(`${p}user_data_bytes`) ?? 0) > 0, 'the resumed session holds its user data again')
  second.terminate()
})

void t.test('resumes over sockets: full and partial replays counted, replayed messages as many as came back', async (t) => {
  const { app, url, metricsUrl } = await metricsApp(t, { metrics: true, replayBufferSize: 10 })
  /** Drops `peer`, sends `away` direct messages meanwhile, and resumes until `expected` came back. */
  async function resumeAfter (peer: ProtocolPeer, away: number, expected: number): Promise<ProtocolPeer> {
    peer.socket.terminate()
    await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
    for (let i = 0; i < away; i++) await app.stabilizer.sendToClient('fay', `away ${i}`)
    const next = await ProtocolPeer.open(`${url}/ws/fay`, { token: peer.welcome!.token!, positions: peer.positionsNow() })
    await next.until(() => next.messages.length === expected)
    return next
  }
  const first = await ProtocolPeer.open(`${url}/ws/fay`)
  await app.stabilizer.sendToClient('fay', 'seen')
  await first.until(() => first.messages.length === 1)
  // A full replay: two direct messages while away, both come back.
  const second = await resumeAfter(first, 2, 2)
  t.match(second.welcome!.resume, { outcome: 'full', replayed: 2, missed: 0 })
  // A partial replay: more while away than the log keeps.
  const third = await resumeAfter(second, 25, 10)
  t.match(third.welcome!.resume, { outcome: 'partial', replayed: 10, missed: 15 })
  t.teardown(() => { third.socket.terminate() })

  const replayed = second.messages.length + third.messages.length
  const s = await scrape(metricsUrl)
  t.equal(s.value(`${p}resumes_total`, { result: 'full', state_restored: 'true' }), 1)
  t.equal(s.value(`${p}resumes_total`, { result: 'partial', state_restored: 'true' }), 1)
  t.equal(s.value(`${p}resumes_total`, { result: 'none', state_restored: 'true' }), 0)
  t.equal(s.value(`${p}replayed_messages_total`), replayed, 'the messages the peers received on resuming')
  t.equal(s.value(`${p}replayed_messages_total`), second.welcome!.resume!.replayed + third.welcome!.resume!.replayed)
  t.equal(s.value(`${p}missed_messages_total`), 15)
  t.equal(s.value(`${p}connections_opened_total`, { resumed: 'true' }), 2)
  t.equal(s.value(`${p}connections_opened_total`, { resumed: 'false' }), 1)
})

void t.test('no client id, IP, token or unlisted group name in any label value', async (t) => {
  const ip = '203.0.113.77'
  const headers = { 'x-forwarded-for': ip }
  const ids = ['cid-zq81vexa', 'cid-xk27wubo', 'cid-mv53tyli']
  const hidden = 'grp-hidden-w4jc'
  const app = await buildApp({ metrics: { groups: ['room'] }, heartbeatInterval: 100, maxConnectionsPerIp: 2 }, { trustProxy: true })
  t.teardown(async () => await app.close())
  const url = await listen(app)
  const metricsUrl = `${httpUrl(url)}/metrics`

  const ada = await openClient(`${url}/ws/${ids[0]}`, { headers })
  const bob = await openClient(`${url}/ws/${ids[1]}`, { headers })
  await waitFor(() => app.stabilizer.getConnectionCount() === 2)
  t.equal(app.stabilizer.getConnection(ids[0])?.remoteAddress, ip, 'the forwarded address is the client\'s IP')
  t.equal((await refusal(`${url}/ws/${ids[2]}`, { headers })).statusCode, 429, 'refused: one IP over its limit')
  for (const id of ids.slice(0, 2)) {
    app.stabilizer.join(id, hidden)
    app.stabilizer.join(id, 'room')
  }
  ada.send('hello')
  await app.stabilizer.broadcast('to the hidden group', { group: hidden })
  await app.stabilizer.sendToClient(ids[1], 'direct')
  await waitFor(() => app.stabilizer.getStats().heartbeat.pongsReceived >= 2)

  const token = app.stabilizer.generateReconnectToken(ids[0])
  ada.terminate()
  await waitFor(() => app.stabilizer.getConnectionCount() === 1 && app.stabilizer.getMemoryUsage().retainedSessions === 1)
  const again = await openClient(`${url}/ws/${ids[0]}?token=${token}`, { headers })
  t.teardown(() => { again.terminate() })
  await waitFor(() => app.stabilizer.getConnectionCount() === 2)
  t.equal((await refusal(`${url}/ws/${ids[0]}?token=${token}`, { headers })).statusCode, 401, 'a reused token is refused')
  const closed = closeOf(bob)
  bob.close(4321, ids[1])
  await closed
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)

  const s = await scrape(metricsUrl)
  t.equal(s.value(`${p}upgrades_rejected_total`, { reason: 'ip_limit' }), 1)
  t.equal(s.value(`${p}upgrades_rejected_total`, { reason: 'token' }), 1)
  t.equal(s.value(`${p}resumes_total`, { result: 'none', state_restored: 'true' }), 1)
  t.equal(s.value(`${p}group_members`, { group: 'room' }), 1, 'a listed group is a label')
  const values = s.samples.flatMap((sample) => Object.values(sample.labels))
  t.ok(values.length > 50, `${values.length} label values`)
  for (const secret of [...ids, ip, '127.0.0.1', token, hidden]) {
    const found = values.filter((value) => value.includes(secret))
    t.same(found, [], `no label value carries ${secret === token ? 'the token' : secret}`)
  }
  // Any token fragment would do as well: no label value is long enough to carry one.
  t.ok(values.every((value) => value.length < 24), 'every label value is short')
})

void t.test('the adapter series, as a shared adapter reports them', async (t) => {
  const { app, metricsUrl } = await metricsApp(t, { metrics: true })
  const recorder = app.stabilizer.metrics!
  recorder.adapterConnectivity(true)
  recorder.adapterPublished(performance.now() - 2, false)
  recorder.adapterPublished(performance.now(), true)
  let s = await scrape(metricsUrl)
  t.equal(s.value(`${p}adapter_connected`), 1)
  t.equal(s.value(`${p}adapter_publish_duration_seconds_count`), 1, 'a successful publish is timed')
  t.equal(s.value(`${p}adapter_publish_errors_total`), 1, 'a failed one is counted')
  recorder.adapterConnectivity(false)
  s = await scrape(metricsUrl)
  t.equal(s.value(`${p}adapter_connected`), 0)
})

void t.test('promtool check metrics finds nothing in a scrape after traffic that touched every series', async (t) => {
  const { app, url, metricsUrl } = await metricsApp(t, {
    metrics: { groups: ['room'] },
    heartbeatInterval: 100,
    heartbeatTimeout: 1000,
    maxConnections: 3,
    maxBufferedAmount: 64 * 1024,
    slowConsumerPolicy: 'drop',
    inboundMessageRate: 2,
    rateLimitPolicy: 'drop',
    maxMessageSize: 1024,
    replayBufferSize: 5
  })
  const one = await openClient(`${url}/ws/one`)
  const fast = await openClient(`${url}/ws/fast`)
  // A raw peer neither reads once paused nor answers heartbeats: a slow consumer first, then a heartbeat timeout.
  const stalled = await openRawPeer(url, '/ws/stalled')
  t.teardown(() => stalled.destroy())
  await waitFor(() => app.stabilizer.getConnectionCount() === 3)
  t.equal((await refusal(`${url}/ws/extra`)).statusCode, 503, 'refused at maxConnections')

  stalled.socket.pause()
  const chunk = Buffer.alloc(32 * 1024, 1)
  let dropped = 0
  for (let i = 0; i < 2000 && dropped < 1 && app.stabilizer.getConnection('stalled') !== undefined; i++) {
    dropped += (await app.stabilizer.broadcast(chunk)).dropped
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.ok(dropped >= 1, 'a broadcast dropped for the stalled reader')
  for (let i = 0; i < 10; i++) fast.send('m')
  await waitFor(() => app.stabilizer.getStats().protection.inboundDropped >= 1)
  fast.terminate()
  await waitFor(() => app.stabilizer.getStats().heartbeat.timeouts >= 1 && app.stabilizer.getConnectionCount() === 1)

  const big = await openClient(`${url}/ws/big`)
  const bigClosed = closeOf(big)
  big.send(Buffer.alloc(2048))
  t.equal((await bigClosed).code, 1009)

  app.stabilizer.join('one', 'room')
  one.send('hi')
  await app.stabilizer.broadcast('all')
  await app.stabilizer.broadcast('room', { group: 'room' })

  // A stabilizer.v1 session away for longer than its log: a partial replay (replayed and missed messages).
  const peer = await ProtocolPeer.open(`${url}/ws/peer`)
  peer.socket.terminate()
  await waitFor(() => app.stabilizer.getMemoryUsage().retainedSessions === 1)
  for (let i = 0; i < 8; i++) await app.stabilizer.sendToClient('peer', `away ${i}`)
  const back = await ProtocolPeer.open(`${url}/ws/peer`, { token: peer.welcome!.token!, positions: peer.positionsNow() })
  await back.until(() => back.messages.length === 5)
  t.match(back.welcome!.resume, { outcome: 'partial' })

  const token = app.stabilizer.generateReconnectToken('one')
  one.terminate()
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const again = await openClient(`${url}/ws/one?token=${token}`)
  t.equal((await refusal(`${url}/ws/two?token=garbage`)).statusCode, 401)
  await waitFor(() => app.stabilizer.getStats().heartbeat.pongsReceived >= 1)
  const closed = [closeOf(again), closeOf(back.socket)]
  await app.stabilizer.gracefulShutdown(1000)
  await Promise.all(closed)

  const s = await scrape(metricsUrl)
  t.equal(s.value(`${p}group_members`, { group: 'room' }), 0)
  t.equal(s.value(`${p}state`, { state: 'closed' }), 1)
  t.ok(s.has(`${p}shutdown_duration_seconds`), 'the drain has a duration now')
  t.equal(s.value(`${p}close_codes_total`, { code: '1012' }), 2)
  for (const reason of ['slow_consumer', 'rate_limit', 'too_large']) t.ok((s.value(`${p}messages_dropped_total`, { reason }) ?? 0) > 0, `dropped: ${reason}`)
  for (const reason of ['connection_limit', 'token']) t.ok((s.value(`${p}upgrades_rejected_total`, { reason }) ?? 0) > 0, `refused: ${reason}`)
  t.ok((s.value(`${p}heartbeat_timeouts_total`) ?? 0) > 0, 'a heartbeat timeout')
  t.equal(s.value(`${p}connections_closed_total`, { cause: 'heartbeat_timeout' }), s.value(`${p}heartbeat_timeouts_total`))

  // Every counter and histogram has a non-zero sample, but those this traffic cannot reach.
  const families = new Map<string, string>()
  for (const line of s.text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line)
    if (type !== null) families.set(type[1], type[2])
  }
  const untouched = [...families].filter(([name, type]) => type !== 'gauge' && !s.samples.some((sample) =>
    (type === 'histogram' ? sample.name === `${name}_count` : sample.name === name) && sample.value > 0)).map(([name]) => name.slice(p.length))
  t.same(untouched.sort(), [
    'adapter_publish_errors_total', // the in-process adapter does not fail
    'heartbeat_reprieves_total' // an event-loop stall at a heartbeat deadline
  ], 'counters and histograms left at zero')

  const check = promtool(['check', 'metrics'], s.text)
  t.equal(check.status, 0, check.output)
  t.equal(check.output.trim(), '', 'no lint finding')
})

void t.test('route options: a path, a hook that protects it, or no route with the series in a registry of the app\'s', async (t) => {
  const registry = new Registry()
  const { url } = await metricsApp(t, {
    metrics: {
      registry,
      route: { path: '/internal/metrics', onRequest: async (request, reply) => { if (request.headers.authorization !== 'Bearer s3cret') await reply.code(401).send() } }
    }
  })
  t.equal((await fetch(`${httpUrl(url)}/internal/metrics`)).status, 401)
  const s = await scrape(`${httpUrl(url)}/internal/metrics`, { authorization: 'Bearer s3cret' })
  t.equal(s.value(`${p}connections`), 0)
  t.equal((await fetch(`${httpUrl(url)}/metrics`)).status, 404)
  t.match(await registry.metrics(), `${p}connections 0`)

  const quiet = await metricsApp(t, { metrics: { route: false, prefix: 'chat_' } })
  t.equal((await fetch(`${httpUrl(quiet.url)}/metrics`)).status, 404, 'route: false serves nothing')
  t.ok(quiet.app.stabilizer.metrics !== undefined, 'the series are kept all the same')
})

void t.test('two apps in one process: each its own registry; a shared registry fails clearly, and is free again once its app closed', async (t) => {
  const a = await metricsApp(t, { metrics: true })
  const b = await metricsApp(t, { metrics: true })
  const client = await openClient(`${a.url}/ws/one`)
  await waitFor(() => a.app.stabilizer.getConnectionCount() === 1)
  t.equal((await scrape(a.metricsUrl)).value(`${p}connections`), 1)
  t.equal((await scrape(b.metricsUrl)).value(`${p}connections`), 0)
  client.terminate()

  const registry = new Registry()
  const first = await buildApp({ metrics: { registry } })
  await t.rejects(buildApp({ metrics: { registry } }), { code: 'FST_WS_STABILIZER_INVALID_OPTION', message: /already has a metric named websocket_stabilizer_/ })
  const other = await buildApp({ metrics: { registry, prefix: 'other_' } })
  t.match(await registry.metrics(), 'other_connections 0', 'another prefix fits in the same registry')
  await first.close()
  const later = await buildApp({ metrics: { registry } })
  t.match(await registry.metrics(), `${p}connections 0`)
  await later.close()
  await other.close()
  t.equal(await registry.metrics(), '\n', 'closed apps leave nothing in the registry')
})

void t.test('with fastify-metrics registered first: one /metrics carries its series and ours', async (t) => {
  const app = Fastify({ logger: false })
  t.teardown(async () => await app.close())
  await app.register(fastifyMetrics, { endpoint: '/metrics', clearRegisterOnInit: true })
  await app.register(stabilizer, { metrics: true })
  app.get('/ws/:clientId', { websocket: true }, () => {})
  app.get('/hello', async () => 'hi')
  const url = await listen(app)
  await fetch(`${httpUrl(url)}/hello`)
  const client = await openClient(`${url}/ws/one`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 1)
  const s = await scrape(`${httpUrl(url)}/metrics`)
  t.ok(s.has('http_request_duration_seconds_count'), 'fastify-metrics\' own series')
  t.ok(s.has('process_cpu_seconds_total'), 'its default metrics')
  t.equal(s.value(`${p}connections`), 1, 'ours, on its route')
  client.terminate()
})

void t.test('with fastify-metrics registered first, a registry or a route of ours is refused', async (t) => {
  for (const metrics of [{ route: '/ws-metrics' }, { registry: new Registry() }]) {
    const app = Fastify({ logger: false })
    await app.register(fastifyMetrics, { endpoint: null, clearRegisterOnInit: true, defaultMetrics: { enabled: false }, routeMetrics: { enabled: false } })
    await t.rejects(async () => { await app.register(stabilizer, { metrics }) }, { code: 'FST_WS_STABILIZER_INVALID_OPTION', message: /fastify-metrics was registered first/ })
    await app.close().catch(() => {})
  }
})

void t.test('prom-client missing: a coded error that says what to install', async (t) => {
  const settings = resolveOptions({ metrics: true }).metrics as ResolvedMetricsOptions
  const app = Fastify({ logger: false })
  t.teardown(async () => await app.close())
  await t.rejects(setupMetrics(app, settings, { getStats: () => { throw new Error('not reached') }, getActiveConnections: () => [], getConnection: () => undefined }, async () => {
    throw new Error('Cannot find package \'prom-client\'')
  }), { code: 'FST_WS_STABILIZER_METRICS_CLIENT_MISSING', message: /npm install prom-client/ })
})

void t.test('the metrics option is validated at register time', async (t) => {
  const bad: Array<[unknown, RegExp]> = [
    ['yes', /"metrics"/],
    [{ prefix: '9lives' }, /"metrics\.prefix"/],
    [{ prefix: 'my-app_' }, /"metrics\.prefix"/],
    [{ route: 'metrics' }, /"metrics\.route"/],
    [{ route: { url: '/m' } }, /"metrics\.route\.url"/],
    [{ buckets: { heartbeatRtt: [0.1, 0.01] } }, /"metrics\.buckets\.heartbeatRtt".*increasing/],
    [{ buckets: { heartbeatRtt: [] } }, /"metrics\.buckets\.heartbeatRtt"/],
    [{ buckets: { rtt: [1] } }, /"metrics\.buckets\.rtt": unknown option/],
    [{ registry: {} }, /"metrics\.registry".*prom-client Registry/],
    [{ histogram: true }, /"metrics\.histogram": unknown option/]
  ]
  for (const [metrics, message] of bad) {
    t.throws(() => resolveOptions({ metrics }), { code: 'FST_WS_STABILIZER_INVALID_OPTION', message }, JSON.stringify(metrics))
  }
  t.equal(resolveOptions({}).metrics, false)
  t.match(resolveOptions({ metrics: true }).metrics, { prefix: p, route: undefined, groups: [] })
  t.match(resolveOptions({ metrics: { buckets: { heartbeatRtt: [0.01, 0.1] } } }).metrics, { buckets: { heartbeatRtt: [0.01, 0.1], connectionDuration: [1, 5] } })
})

void t.test('close codes become bounded labels', async (t) => {
  t.equal(closeCodeLabel(1000), '1000')
  t.equal(closeCodeLabel(1005), '1005', 'standard codes as they are')
  t.equal(closeCodeLabel(4002), '4002', 'documented application codes as they are')
  t.equal(closeCodeLabel(4321), '4000-4499')
  t.equal(closeCodeLabel(4777), '4500-4999')
  t.equal(closeCodeLabel(3000), 'other')
  t.equal(closeCodeLabel(1100), 'other')
})
