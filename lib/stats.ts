/**
 * The stabilizer's counters and the shape of `GET /ws-stats`: everything here is O(1) to
 * update; percentiles are computed when stats are read.
 */
import type { DisconnectCause } from './connection.js'
import type { HeartbeatCounters } from './heartbeat.js'
import type { LifecycleState } from './shutdown.js'

/** Why an upgrade was refused before it happened. */
export type RejectionReason = 'connectionLimit' | 'shuttingDown' | 'identity' | 'token' | 'origin' | 'ipLimit' | 'connectRate'

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
  readonly rejected: Record<RejectionReason, number> = { connectionLimit: 0, shuttingDown: 0, identity: 0, token: 0, origin: 0, ipLimit: 0, connectRate: 0 }
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
