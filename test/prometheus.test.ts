import t from 'tap'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import type { WebSocket } from 'ws'
import { buildChatApp } from '../example/app.js'
import { listen, openClient, waitFor } from './fixtures/server.js'
import { prometheusPath, promtool, promtoolPath, requireBinary, startPrometheus } from './fixtures/prometheus.js'

// Both binaries come from the Debian package `prometheus`: fail at once, saying so, without them.
requireBinary(prometheusPath, 'prometheus')
requireBinary(promtoolPath, 'prometheus')

const alertsFile = fileURLToPath(new URL('../dashboards/alerts.yml', import.meta.url))
const alertsTestFile = fileURLToPath(new URL('../dashboards/alerts.test.yml', import.meta.url))
const dashboardFile = new URL('../dashboards/websocket-stabilizer.json', import.meta.url)

interface Target { expr: string, refId: string }
interface Panel { title: string, type: string, targets?: Target[], panels?: Panel[] }
interface Dashboard { panels: Panel[], templating: { list: Array<{ name: string, type: string, query?: unknown }> } }

const dashboard = JSON.parse(await readFile(dashboardFile, 'utf8')) as Dashboard
/** Every panel, rows' collapsed panels included. */
const panels = dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])]).filter((panel) => panel.type !== 'row')
const rows = dashboard.panels.filter((panel) => panel.type === 'row').map((row) => row.title)

/** A panel query as Grafana sends it with every job and instance selected, at a 1 s scrape interval. */
function grafanaQuery (expr: string): string {
  return expr.replaceAll('$__rate_interval', '10s').replaceAll('$job', '.*').replaceAll('$instance', '.*')
}

void t.test('promtool: the alert rules are valid and each fires on the series it is about', async (t) => {
  const check = promtool(['check', 'rules', alertsFile])
  t.equal(check.status, 0, check.output)
  t.match(check.output, 'SUCCESS: 5 rules found')
  const unit = promtool(['test', 'rules', alertsTestFile])
  t.equal(unit.status, 0, unit.output)
})

void t.test('the dashboard: the rows of the issue, job/instance variables, histograms through histogram_quantile over $__rate_interval', async (t) => {
  t.same(rows, ['Overview', 'Lifecycle', 'Heartbeat', 'Traffic', 'Backpressure and drops', 'Resume', 'Broadcast', 'Adapter'])
  const variables = dashboard.templating.list.map((variable) => variable.name)
  t.ok(variables.includes('job') && variables.includes('instance'), variables.join(', '))
  for (const panel of panels) {
    t.ok((panel.targets ?? []).length > 0, `${panel.title} has a query`)
    for (const { expr } of panel.targets ?? []) {
      t.match(expr, /job=~"\$job", instance=~"\$instance"/, `${panel.title}: filtered by the variables`)
      for (const window of expr.matchAll(/\[([^\]]+)\]/g)) t.equal(window[1], '$__rate_interval', `${panel.title}: ${window[0]}`)
      if (expr.includes('histogram_quantile')) t.match(expr, /histogram_quantile\([\d.]+, sum by \(le[^)]*\) \(rate\([a-z_]+_bucket\{/, `${panel.title}: a quantile of bucket rates`)
    }
  }
})

void t.test('a real Prometheus scraping the example app under traffic: every panel query and alert rule evaluates, the main panels have data', async (t) => {
  const app = await buildChatApp({ metrics: true, heartbeatInterval: 200 }, { logger: false })
  t.teardown(async () => await app.close())
  const url = await listen(app)
  const { host } = new URL(url)
  const prometheus = await startPrometheus(host, '/metrics', [alertsFile])
  t.teardown(prometheus.stop)

  // Traffic: chatters in a room, each message broadcast to all; one chatter leaves and another
  // comes every few rounds; one leaves abruptly and resumes its session.
  const clients = new Map<string, WebSocket>()
  const join = async (id: string, query = ''): Promise<void> => {
    const ws = await openClient(`${url}/ws/${id}${query}`)
    ws.on('error', () => {})
    clients.set(id, ws)
    ws.send('/join room')
  }
  for (let i = 0; i < 5; i++) await join(`chatter-${i}`)
  await waitFor(() => app.stabilizer.getConnectionCount() === 5)
  let round = 0
  let traffic: Promise<void> = Promise.resolve()
  const timer = setInterval(() => {
    round++
    for (const [id, ws] of clients) ws.send(round % 2 === 0 ? `hello from ${id}` : `/say room round ${round}`)
    if (round % 5 === 0) {
      const [leaving] = clients.keys()
      clients.get(leaving)?.close(1000)
      clients.delete(leaving)
      traffic = traffic.then(async () => await join(`chatter-${round}`))
    }
    if (round === 12) {
      const [id] = clients.keys()
      const token = app.stabilizer.generateReconnectToken(id)
      clients.get(id)?.terminate()
      clients.delete(id)
      traffic = traffic.then(async () => {
        await waitFor(() => app.stabilizer.getConnection(id) === undefined)
        await join(id, `?token=${token}`)
      })
    }
  }, 100)
  t.teardown(() => {
    clearInterval(timer)
    for (const ws of clients.values()) ws.terminate()
  })

  // Enough scrapes for rates over 10 s windows, under traffic the whole time.
  const deadline = Date.now() + 60_000
  for (;;) {
    const result = await prometheus.api<{ result: Array<{ value: [number, string] }> }>('query', { query: 'count_over_time(up{job="stabilizer"}[1m]) and up{job="stabilizer"} == 1' })
    if (Number(result.result[0]?.value[1] ?? 0) >= 12) break
    if (Date.now() > deadline) throw new Error('Prometheus did not scrape the app 12 times within 60 s')
    await new Promise((resolve) => setTimeout(resolve, 500))
  }
  await traffic

  const jobs = await prometheus.api<string[]>('label/job/values', { 'match[]': 'websocket_stabilizer_build_info' })
  t.same(jobs, ['stabilizer'], 'the job variable\'s query finds the app')

  const withData = new Set<string>()
  for (const panel of panels) {
    for (const target of panel.targets ?? []) {
      const query = grafanaQuery(target.expr)
      const data = await prometheus.api<{ resultType: string, result: Array<{ value: [number, string] }> }>('query', { query })
      t.equal(data.resultType, 'vector', `${panel.title} ${target.refId}: evaluates`)
      if (data.result.some(({ value }) => Number.isFinite(Number(value[1])))) withData.add(panel.title)
    }
  }
  const main = ['Open connections', 'Instances by state', 'Connects and closes per second', 'Heartbeat RTT p99', 'Messages per second', 'Closes by cause', 'Closes by code',
    'RTT percentiles', 'Pings and pongs per second', 'Payload bytes per second', 'Resumes by result', 'Broadcasts per second', 'Broadcast duration', 'Groups and memberships']
  for (const title of main) t.ok(withData.has(title), `${title} has data`)

  const rules = await prometheus.api<{ groups: Array<{ rules: Array<{ name: string, query: string }> }> }>('rules')
  const loaded = rules.groups.flatMap((group) => group.rules)
  t.equal(loaded.length, 5, 'Prometheus loaded every alert rule')
  for (const rule of loaded) {
    const data = await prometheus.api<{ resultType: string }>('query', { query: rule.query })
    t.equal(data.resultType, 'vector', `${rule.name}: evaluates`)
  }
  // Rules run on Prometheus' own schedule: wait until each has been evaluated once, then read its health.
  const evaluated = Date.now() + 20_000
  for (;;) {
    const now = await prometheus.api<{ groups: Array<{ rules: Array<{ name: string, health: string, lastError?: string }> }> }>('rules')
    const states = now.groups.flatMap((group) => group.rules)
    if (states.every((rule) => rule.health !== 'unknown')) {
      for (const rule of states) t.equal(rule.health, 'ok', `${rule.name} evaluated by Prometheus ${rule.lastError ?? ''}`)
      break
    }
    if (Date.now() > evaluated) throw new Error(`rules not evaluated within 20 s: ${JSON.stringify(states)}`)
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
})
