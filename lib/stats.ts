import type { DisconnectCause } from './connection.js'

/** Why an upgrade was refused before it happened. */
export type RejectionReason = 'connectionLimit' | 'shuttingDown' | 'identity' | 'origin' | 'ipLimit' | 'connectRate'

/** Running counters; everything here is O(1) to update. */
export class Counters {
  readonly startedAt = Date.now()
  opened = 0
  closed = 0
  readonly closedByCode = new Map<number, number>()
  readonly closedByCause = new Map<DisconnectCause, number>()
  readonly rejected: Record<RejectionReason, number> = { connectionLimit: 0, shuttingDown: 0, identity: 0, origin: 0, ipLimit: 0, connectRate: 0 }
  readonly protection = { memoryEvictions: 0, slowConsumerDrops: 0, slowConsumerDisconnects: 0, inboundDropped: 0, rateLimitCloses: 0 }

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
