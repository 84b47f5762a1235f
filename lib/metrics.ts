// The stabilizer's Prometheus series: the recorder the core calls once per event, and the
// collectors that read getStats() when Prometheus scrapes (nothing a scrape can read is counted twice).
import { createRequire } from 'node:module'
import type { Counter, Gauge, Histogram } from 'prom-client'
import { closeCodeTable } from './close-codes.js'
import type { DisconnectCause, StabilizedConnection } from './connection.js'
import { InvalidOptionError } from './errors.js'
import type { BroadcastResult } from './fanout.js'
import type { EncodedMessage } from './message.js'
import type { MetricsBuckets, MetricsRegistry } from './options.js'
import { inboundSize } from './rate-limit.js'
import type { ReplayOutcome } from './protocol.js'
import type { StabilizerStats } from './stats.js'
import { waitingBytes } from './write-coalescing.js'

/**
 * What the core reports as it happens; everything else is read at scrape time. Times are
 * what the core has at hand: `performance.now()` starts, `Date.now()` connection starts, ms.
 * Every method is cheap enough for its call site: the per-message ones add to plain numbers.
 */
export interface StabilizerMetrics {
  /** An inbound application message reached the route's listeners (ws's data: Buffer, ArrayBuffer or fragments). */
  received: (data: unknown) => void
  /** `messages` messages of `bytes` bytes each were handed to sockets (`sendToClient`). */
  sent: (messages: number, bytes: number) => void
  /** A broadcast (`toGroup`: to a group's members) started at `startedAt` (performance.now()) settled with `result`. */
  broadcast: (toGroup: boolean, startedAt: number, result: BroadcastResult, message: EncodedMessage) => void
  /** A heartbeat was answered after `ms`. */
  rtt: (ms: number) => void
  /** A connection registered at `connectedAt` (Date.now()) has closed. */
  connectionClosed: (connectedAt: number) => void
  /** A connection resumed a session with a reconnect token (undefined: it did not resume; nothing is counted). */
  resumed: (report: ResumeSummary | undefined) => void
  /** An upgrade's reconnect token was refused (invalid, expired, already used, another client's). */
  resumeRejected: () => void
  /** A graceful shutdown's drain took `ms`. */
  shutdownFinished: (ms: number) => void
  /** An adapter publish started at `startedAt` (performance.now()) settled; `failed` when it rejected. */
  adapterPublished: (startedAt: number, failed: boolean) => void
  /** A shared adapter lost (false) or regained (true) its store. */
  adapterConnectivity: (connected: boolean) => void
}

/** What a resume gave back (the core's resume report). */
export interface ResumeSummary {
  readonly outcome: ReplayOutcome
  readonly stateRestored: boolean
  readonly replayed: number
  readonly missed: number
}

/** What a scrape reads: the stabilizer's public API. */
export interface MetricsSource {
  getStats: () => StabilizerStats
  getActiveConnections: () => string[]
  getConnection: (clientId: string) => StabilizedConnection | undefined
}

/** The parts of prom-client (or of fastify-metrics' `client`) the series are made with. */
export interface PromClient {
  Counter: typeof Counter
  Gauge: typeof Gauge
  Histogram: typeof Histogram
}

export interface SeriesSettings {
  prefix: string
  buckets: MetricsBuckets
  groups: readonly string[]
}

/** The series, registered; `unregister()` takes them out of the registry (the app closed). */
export interface RegisteredSeries {
  readonly recorder: StabilizerMetrics
  readonly names: readonly string[]
  unregister: () => void
}

const version = (createRequire(import.meta.url)('../package.json') as { version: string }).version

/** Every disconnect cause, so that each has a series from the start (a counter born at 1 loses that close in rate()). */
const causes = Object.keys({
  client_closed: true,
  connection_lost: true,
  server_disconnect: true,
  replaced: true,
  shutdown: true,
  handler_error: true,
  connection_limit: true,
  message_too_big: true,
  protocol_error: true,
  heartbeat_timeout: true,
  memory_eviction: true,
  slow_consumer: true,
  rate_limited: true
} satisfies Record<DisconnectCause, true>)

const documentedCodes = new Set(closeCodeTable.map((row) => row.code))
const resumeResults = ['full', 'partial', 'none', 'rejected'] as const
const lifecycleStates = ['running', 'draining', 'closed'] as const

/**
 * The `code` label of a close: the standard codes (1000–1015) and the documented ones as
 * they are; other application codes by the range that says what a client does (4000–4499
 * reconnect, 4500–4999 do not); anything else `other`. Clients choose their own close codes:
 * unbucketed, they could grow the series without bound.
 */
export function closeCodeLabel (code: number): string {
  if ((code >= 1000 && code <= 1015) || documentedCodes.has(code)) return String(code)
  if (code >= 4000 && code <= 4499) return '4000-4499'
  if (code >= 4500 && code <= 4999) return '4500-4999'
  return 'other'
}

/** What one scrape reads, once for all series. */
interface Snapshot {
  readonly stats: StabilizerStats
  readonly memberships: number
  readonly slowConsumers: number
  readonly largestBuffer: number
  readonly groupMembers: ReadonlyMap<string, number>
}

type Labels = Record<string, string>
type Samples = number | ReadonlyArray<readonly [Labels, number]> | undefined

/**
 * The recorder: plain numbers for what happens per message (read by the collectors), and
 * prom-client histograms with their label children cached for what happens per heartbeat,
 * close or broadcast.
 */
class Recorder implements StabilizerMetrics {
  messagesReceived = 0
  bytesReceived = 0
  messagesSent = 0
  bytesSent = 0
  droppedClosed = 0
  resumedConnections = 0
  replayedMessages = 0
  missedMessages = 0
  adapterErrors = 0
  readonly resumes = new Map<string, number>()
  shutdownSeconds: number | undefined = undefined
  adapterUp: boolean | undefined = undefined
  private readonly broadcastToAll
  private readonly broadcastToGroup

  constructor (
    private readonly rttSeconds: Histogram,
    private readonly connectionSeconds: Histogram,
    broadcastSeconds: Histogram<'scope'>,
    private readonly publishSeconds: Histogram
  ) {
    this.broadcastToAll = broadcastSeconds.labels('all')
    this.broadcastToGroup = broadcastSeconds.labels('group')
    for (const result of resumeResults) {
      for (const restored of ['true', 'false']) this.resumes.set(`${result}|${restored}`, 0)
    }
  }

  received (data: unknown): void {
    this.messagesReceived++
    this.bytesReceived += Buffer.isBuffer(data) ? data.length : inboundSize(data)
  }

  sent (messages: number, bytes: number): void {
    this.messagesSent += messages
    this.bytesSent += messages * bytes
  }

  broadcast (toGroup: boolean, startedAt: number, result: BroadcastResult, message: EncodedMessage): void {
    ;(toGroup ? this.broadcastToGroup : this.broadcastToAll).observe((performance.now() - startedAt) / 1000)
    this.sent(result.sent, typeof message.data === 'string' ? Buffer.byteLength(message.data) : message.data.length)
    this.droppedClosed += result.skipped + result.failed
  }

  rtt (ms: number): void {
    this.rttSeconds.observe(ms / 1000)
  }

  connectionClosed (connectedAt: number): void {
    this.connectionSeconds.observe(Math.max(0, Date.now() - connectedAt) / 1000)
  }

  resumed (report: ResumeSummary | undefined): void {
    if (report === undefined) return
    this.resumedConnections++
    this.replayedMessages += report.replayed
    this.missedMessages += report.missed
    const key = `${report.outcome}|${String(report.stateRestored)}`
    this.resumes.set(key, (this.resumes.get(key) ?? 0) + 1)
  }

  resumeRejected (): void {
    this.resumes.set('rejected|false', (this.resumes.get('rejected|false') ?? 0) + 1)
  }

  shutdownFinished (ms: number): void {
    this.shutdownSeconds = ms / 1000
  }

  adapterPublished (startedAt: number, failed: boolean): void {
    if (failed) this.adapterErrors++
    else this.publishSeconds.observe((performance.now() - startedAt) / 1000)
  }

  adapterConnectivity (connected: boolean): void {
    this.adapterUp = connected
  }
}

/**
 * Makes every series and registers it in `registry`.
 * @throws InvalidOptionError when a series of the same name is already there (another app or
 * stabilizer on the same registry): nothing is registered then.
 */
export function registerSeries (client: PromClient, registry: MetricsRegistry, settings: SeriesSettings, source: MetricsSource): RegisteredSeries {
  const { prefix, buckets, groups } = settings
  const metrics: Array<Counter<string> | Gauge<string> | Histogram<string>> = []

  // One read of the stabilizer per scrape: prom-client calls every collector in the same
  // synchronous pass, so the snapshot is dropped at the next microtask.
  let snapshot: Snapshot | undefined
  const read = (): Snapshot => {
    if (snapshot === undefined) {
      snapshot = takeSnapshot(source, groups)
      queueMicrotask(() => { snapshot = undefined })
    }
    return snapshot
  }

  const counter = (name: string, help: string, labelNames: readonly string[], samples: (s: Snapshot) => Samples): void => {
    metrics.push(new client.Counter({
      name: prefix + name,
      help,
      labelNames,
      registers: [],
      collect () {
        this.reset()
        const values = samples(read())
        if (typeof values === 'number') this.inc(values)
        else for (const [labels, value] of values ?? []) this.inc(labels, value)
      }
    }))
  }
  const gauge = (name: string, help: string, labelNames: readonly string[], samples: (s: Snapshot) => Samples): void => {
    metrics.push(new client.Gauge({
      name: prefix + name,
      help,
      labelNames,
      registers: [],
      collect () {
        this.reset()
        const values = samples(read())
        if (typeof values === 'number') this.set(values)
        else if (values === undefined) this.remove() // no sample until the value is known
        else for (const [labels, value] of values) this.set(labels, value)
      }
    }))
  }
  const histogram = <L extends string>(name: string, help: string, labelNames: readonly L[], bounds: readonly number[]): Histogram<L> => {
    const made = new client.Histogram<L>({ name: prefix + name, help, labelNames, buckets: [...bounds], registers: [] })
    metrics.push(made as unknown as Histogram<string>)
    return made
  }

  const broadcastSeconds = histogram('broadcast_duration_seconds', 'Time from a broadcast call until every local recipient was handed the message, by scope (all, group).', ['scope'], buckets.broadcastDuration)
  broadcastSeconds.zero({ scope: 'all' })
  broadcastSeconds.zero({ scope: 'group' })
  const recorder = new Recorder(
    histogram('heartbeat_rtt_seconds', 'Round-trip time of answered heartbeats.', [], buckets.heartbeatRtt),
    histogram('connection_duration_seconds', 'Lifetime of closed connections, from registration to close.', [], buckets.connectionDuration),
    broadcastSeconds,
    histogram('adapter_publish_duration_seconds', 'Time a successful publish through the adapter took (every broadcast, and sendToClient but to a plain client connected here; the in-process adapter\'s too).', [], buckets.adapterPublish)
  )

  // Lifecycle
  gauge('connections', 'Open connections.', [], (s) => s.stats.activeConnections)
  counter('connections_opened_total', 'Connections registered; resumed="true" for those that resumed a session with a reconnect token.', ['resumed'], (s) => [
    [{ resumed: 'true' }, recorder.resumedConnections],
    [{ resumed: 'false' }, Math.max(0, s.stats.totalConnections - recorder.resumedConnections)]
  ])
  counter('connections_closed_total', 'Connections closed, by cause (client_closed, connection_lost, heartbeat_timeout, shutdown…).', ['cause'], (s) =>
    causes.map((cause) => [{ cause }, s.stats.closedByCause[cause] ?? 0]))
  counter('close_codes_total', 'Connections closed, by close code (standard and documented codes as they are; other application codes as 4000-4499 or 4500-4999; anything else other).', ['code'], (s) => {
    const byLabel = new Map<string, number>([...documentedCodes].map((code) => [String(code), 0]))
    for (const [code, count] of Object.entries(s.stats.closedByCode)) {
      const label = closeCodeLabel(Number(code))
      byLabel.set(label, (byLabel.get(label) ?? 0) + count)
    }
    return [...byLabel].map(([code, count]) => [{ code }, count])
  })
  counter('upgrades_rejected_total', 'Upgrades refused before they happened, by reason (connection_limit, shutting_down, identity, client_id, token, origin, ip_limit, connect_rate).', ['reason'], (s) =>
    Object.entries(s.stats.rejectedUpgrades).map(([reason, count]) => [{ reason: snakeCase(reason) }, count]))
  gauge('state', 'Lifecycle of the stabilizer: 1 for its current state (running, draining, closed), 0 for the others.', ['state'], (s) =>
    lifecycleStates.map((state) => [{ state }, s.stats.status === state ? 1 : 0]))
  gauge('shutdown_duration_seconds', 'Wall time of the last graceful shutdown\'s drain (absent before one).', [], () => recorder.shutdownSeconds)

  // Heartbeat
  counter('heartbeat_pings_total', 'Heartbeats sent.', [], (s) => s.stats.heartbeat.pingsSent)
  counter('heartbeat_pongs_total', 'Heartbeats answered (and measured).', [], (s) => s.stats.heartbeat.pongsReceived)
  counter('heartbeat_timeouts_total', 'Connections terminated for not answering a heartbeat in time.', [], (s) => s.stats.heartbeat.timeouts)
  counter('heartbeat_reprieves_total', 'Connections suspected at their deadline whose answer was then found in pending I/O (an event-loop stall, not a dead peer).', [], (s) => s.stats.heartbeat.reprieves)
  gauge('heartbeat_longest_tick_seconds', 'Longest time one heartbeat tick held the event loop since start.', [], (s) => s.stats.heartbeat.longestTickMs / 1000)

  // Traffic
  counter('messages_received_total', 'Inbound application messages delivered to route listeners (heartbeats and protocol control frames excluded).', [], () => recorder.messagesReceived)
  counter('received_bytes_total', 'Payload bytes of inbound application messages (before WebSocket framing; after decompression).', [], () => recorder.bytesReceived)
  counter('messages_sent_total', 'Outbound messages handed to sockets by sendToClient and broadcast (heartbeats, welcomes and replays excluded).', [], () => recorder.messagesSent)
  counter('sent_bytes_total', 'Payload bytes of outbound messages handed to sockets, before WebSocket framing and compression (a direct send to a stabilizer.v1 client counts its envelope too).', [], () => recorder.bytesSent)

  // Backpressure and limits
  counter('messages_dropped_total', 'Messages never delivered, by reason: slow_consumer (outbound buffer full), rate_limit (inbound over its rate), too_large (inbound over maxMessageSize), closed (recipient closing or closed; a stabilizer.v1 session may still get it on resume).', ['reason'], (s) => [
    [{ reason: 'slow_consumer' }, s.stats.protection.slowConsumerDrops],
    [{ reason: 'rate_limit' }, s.stats.protection.inboundDropped],
    [{ reason: 'too_large' }, s.stats.closedByCause.message_too_big ?? 0],
    [{ reason: 'closed' }, recorder.droppedClosed]
  ])
  gauge('send_buffer_bytes', 'Outbound bytes waiting in the sockets\' buffers (ws bufferedAmount), all connections.', [], (s) => s.stats.memory.bufferedBytes)
  gauge('send_buffer_max_bytes', 'Largest outbound backlog of one open connection.', [], (s) => s.largestBuffer)
  gauge('slow_consumers', 'Open connections with outbound bytes the kernel has not accepted yet (ws bufferedAmount > 0): readers not keeping up now.', [], (s) => s.slowConsumers)
  gauge('user_data_bytes', 'Bytes of user data held by open connections (setUserData).', [], (s) => s.stats.memory.userDataBytes)

  // Resume
  counter('resumes_total', 'Sessions resumed with a reconnect token, by what came back: result (full, partial, none: the missed messages; rejected: the token was refused) and state_restored (user data and groups).', ['result', 'state_restored'], () =>
    [...recorder.resumes].map(([key, count]) => {
      const [result, restored] = key.split('|')
      return [{ result, state_restored: restored }, count]
    }))
  counter('replayed_messages_total', 'Messages sent again to resuming stabilizer.v1 clients.', [], () => recorder.replayedMessages)
  counter('missed_messages_total', 'Messages resuming clients missed and could not get back.', [], () => recorder.missedMessages)
  gauge('retained_sessions', 'Sessions kept for their clients to resume.', [], (s) => s.stats.memory.retainedSessions)
  gauge('retained_session_bytes', 'Bytes held by retained sessions (user data and replay logs).', [], (s) => s.stats.memory.retainedSessionBytes)

  // Groups
  gauge('groups', 'Groups with at least one member.', [], (s) => s.stats.groups)
  gauge('group_memberships', 'Group memberships of open connections (a connection in three groups counts three).', [], (s) => s.memberships)
  if (groups.length > 0) {
    gauge('group_members', 'Members of the groups named in the metrics option `groups`.', ['group'], (s) => [...s.groupMembers].map(([group, count]) => [{ group }, count]))
  }

  // Adapter
  counter('adapter_publish_errors_total', 'Publishes through the adapter that failed (a shared adapter\'s store unreachable).', [], () => recorder.adapterErrors)
  // A shared adapter reports changes only: until its first outage, its started cluster view says it is up.
  gauge('adapter_connected', 'Whether the shared adapter reaches its store (1) or not (0); absent with the in-process adapter.', [], (s) =>
    recorder.adapterUp === undefined ? (s.stats.cluster === undefined ? undefined : 1) : recorder.adapterUp ? 1 : 0)

  gauge('build_info', 'Always 1; the version label is the plugin\'s.', ['version'], () => [[{ version }, 1]])

  const names = metrics.map((metric) => (metric as unknown as { name: string }).name)
  const taken = names.find((name) => registry.getSingleMetric(name) !== undefined)
  if (taken !== undefined) {
    throw new InvalidOptionError('metrics', `the registry already has a metric named ${taken} (another app or stabilizer registered it): give each its own registry (the default) or its own prefix`)
  }
  for (const metric of metrics) registry.registerMetric(metric)
  return {
    recorder,
    names,
    unregister: () => {
      for (const name of names) registry.removeSingleMetric(name)
    }
  }
}

function takeSnapshot (source: MetricsSource, groups: readonly string[]): Snapshot {
  const stats = source.getStats()
  let memberships = 0
  let slowConsumers = 0
  let largestBuffer = 0
  const groupMembers = new Map(groups.map((group) => [group, 0]))
  for (const clientId of source.getActiveConnections()) {
    const connection = source.getConnection(clientId)
    if (connection === undefined) continue
    const buffered = waitingBytes(connection.socket)
    if (buffered > 0) slowConsumers++
    if (buffered > largestBuffer) largestBuffer = buffered
    const joined = connection.groups
    memberships += joined.size
    if (joined.size === 0 || groupMembers.size === 0) continue
    for (const [group, count] of groupMembers) if (joined.has(group)) groupMembers.set(group, count + 1)
  }
  return { stats, memberships, slowConsumers, largestBuffer, groupMembers }
}

function snakeCase (name: string): string {
  return name.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`)
}
