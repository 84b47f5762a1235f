/**
 * The stabilizer's counters and the shape of `GET /ws-stats`: everything here is O(1) to
 * update; percentiles are computed when stats are read.
 */
import type { ClusterView } from './adapter/adapter.js'
import type { Connection, DisconnectCause } from './connection.js'
import type { HeartbeatCounters } from './heartbeat.js'
import type { ResolvedOptions } from './options.js'
import type { LifecycleState } from './shutdown.js'
import { waitingBytes } from './write-coalescing.js'

/** Why an upgrade was refused before it happened. */
export type RejectionReason = 'connectionLimit' | 'shuttingDown' | 'identity' | 'clientId' | 'token' | 'origin' | 'ipLimit' | 'connectRate'

export interface MemoryUsage {
  /** Open connections. */
  connections: number
  /** Bytes of user data held (serialized size, see `setUserData`). */
  userDataBytes: number
  /** Bytes queued for sending on all sockets (`ws` bufferedAmount). */
  bufferedBytes: number
  /** Bytes of user data held in retained sessions, waiting for their clients to resume. */
  retainedSessionBytes: number
  /** Sessions retained. */
  retainedSessions: number
  /** (userDataBytes + bufferedBytes) / connections, 0 with no connection. */
  averageBytesPerConnection: number
}

export interface RttPercentiles {
  /** Connections with a measured RTT. */
  samples: number
  p50: number | null
  p90: number | null
  p99: number | null
}

export interface HeartbeatStats extends HeartbeatCounters {
  type: 'ping' | 'custom'
  intervalMs: number
  timeoutMs: number
  /** Percentiles of the connections' smoothed RTT, in ms (null without a sample). */
  rttMs: RttPercentiles
}

export interface ProtectionStats {
  /** Connections closed (4001) to bring user data back under `maxTotalMemory`. */
  memoryEvictions: number
  /** Messages not sent because the recipient's outbound buffer was full. */
  slowConsumerDrops: number
  /** Connections closed (4002) for a full outbound buffer. */
  slowConsumerDisconnects: number
  /** Inbound messages over the rate limit, never delivered to a handler. */
  inboundDropped: number
  /** Connections closed (1008) for sending too fast. */
  rateLimitCloses: number
}

/** The cluster as the adapter sees it (only with a shared adapter). */
export interface ClusterStats {
  /** Instances alive, this one included. */
  instances: number
  /** Connections held by all of them. */
  connections: number
}

export interface StabilizerStats {
  status: LifecycleState
  uptimeMs: number
  activeConnections: number
  totalConnections: number
  totalDisconnections: number
  closedByCode: Record<string, number>
  closedByCause: Record<string, number>
  rejectedUpgrades: Record<RejectionReason, number>
  groups: number
  memory: MemoryUsage
  protection: ProtectionStats
  heartbeat: HeartbeatStats
  cluster?: ClusterStats
  clientIds?: string[]
}

/** Running counters. */
export class Counters {
  readonly startedAt = Date.now()
  opened = 0
  closed = 0
  readonly closedByCode = new Map<number, number>()
  readonly closedByCause = new Map<DisconnectCause, number>()
  readonly rejected: Record<RejectionReason, number> = { connectionLimit: 0, shuttingDown: 0, identity: 0, clientId: 0, token: 0, origin: 0, ipLimit: 0, connectRate: 0 }
  readonly protection: ProtectionStats = { memoryEvictions: 0, slowConsumerDrops: 0, slowConsumerDisconnects: 0, inboundDropped: 0, rateLimitCloses: 0 }

  recordClose (code: number, cause: DisconnectCause): void {
    this.closed++
    this.closedByCode.set(code, (this.closedByCode.get(code) ?? 0) + 1)
    this.closedByCause.set(cause, (this.closedByCause.get(cause) ?? 0) + 1)
  }
}

export function mapToRecord<K extends string | number> (map: ReadonlyMap<K, number>): Record<string, number> {
  const record: Record<string, number> = {}
  for (const [key, value] of map) record[String(key)] = value
  return record
}

/** Percentiles of the connections' smoothed RTTs (nearest rank, 2 decimals). */
export function rttPercentiles (connections: Iterable<{ readonly smoothedRtt: number | undefined }>): RttPercentiles {
  const values: number[] = []
  for (const connection of connections) {
    const rtt = connection.smoothedRtt
    if (rtt !== undefined) values.push(rtt)
  }
  if (values.length === 0) return { samples: 0, p50: null, p90: null, p99: null }
  const sorted = Float64Array.from(values).sort()
  const at = (q: number): number => Math.round(sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] * 100) / 100
  return { samples: sorted.length, p50: at(0.5), p90: at(0.9), p99: at(0.99) }
}

/** What the stats are read from: the connections of this instance, as the registry holds them. */
interface ConnectionsView {
  readonly size: number
  readonly groupCount: number
  readonly live: ReadonlySet<Connection>
  connections: () => Iterable<Connection>
  ids: () => Iterable<string>
}

/** Memory held for the connections of this instance (buffers read now) and by the adapter's retained sessions. */
export function memoryUsage (registry: ConnectionsView, userDataBytes: number, retained = { sessions: 0, bytes: 0 }): MemoryUsage {
  let bufferedBytes = 0
  for (const connection of registry.live) bufferedBytes += waitingBytes(connection.socket)
  const connections = registry.size
  return {
    connections,
    userDataBytes,
    bufferedBytes,
    retainedSessionBytes: retained.bytes,
    retainedSessions: retained.sessions,
    averageBytesPerConnection: connections === 0 ? 0 : Math.round((userDataBytes + bufferedBytes) / connections)
  }
}

/** `GET /ws-stats` from the counters and the connections as they are now. */
export function collectStats (from: {
  readonly status: LifecycleState
  readonly counters: Counters
  readonly registry: ConnectionsView
  readonly memory: MemoryUsage
  readonly heartbeat: HeartbeatCounters | undefined
  readonly cluster: ClusterView | undefined
  readonly options: Pick<ResolvedOptions, 'heartbeatType' | 'heartbeatInterval' | 'heartbeatTimeout' | 'statsIncludeClientIds'>
}): StabilizerStats {
  const { counters, registry, options } = from
  const stats: StabilizerStats = {
    status: from.status,
    uptimeMs: Date.now() - counters.startedAt,
    activeConnections: registry.size,
    totalConnections: counters.opened,
    totalDisconnections: counters.closed,
    closedByCode: mapToRecord(counters.closedByCode),
    closedByCause: mapToRecord(counters.closedByCause),
    rejectedUpgrades: { ...counters.rejected },
    groups: registry.groupCount,
    memory: from.memory,
    protection: { ...counters.protection },
    heartbeat: {
      type: options.heartbeatType,
      intervalMs: options.heartbeatInterval,
      timeoutMs: options.heartbeatTimeout,
      ...(from.heartbeat ?? { pingsSent: 0, pongsReceived: 0, timeouts: 0, reprieves: 0, longestTickMs: 0 }),
      rttMs: rttPercentiles(registry.connections())
    }
  }
  if (from.cluster !== undefined) stats.cluster = { ...from.cluster }
  if (options.statsIncludeClientIds) stats.clientIds = [...registry.ids()]
  return stats
}
