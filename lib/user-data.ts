/**
 * User data of the connections: per-connection and total budgets, and who is evicted when the
 * total would be passed. Sizes are the UTF-8 length of the key plus that of the value's JSON.
 */
import type { Connection } from './connection.js'
import { MemoryLimitExceededError } from './errors.js'

export type EvictionPolicy = 'lru' | 'oldest' | 'largest'

export interface UserDataLimits {
  readonly maxMemoryPerConnection: number
  readonly maxTotalMemory: number
  readonly memoryEvictionPolicy: EvictionPolicy
}

const byPolicy: Record<EvictionPolicy, (a: Connection, b: Connection) => number> = {
  lru: (a, b) => a.lastActivityAt - b.lastActivityAt,
  oldest: (a, b) => a.connectedAt - b.connectedAt,
  largest: (a, b) => b.userDataBytes - a.userDataBytes
}

/**
 * Picks, in the order of `policy`, the connections to evict so that at least `needed` bytes
 * of user data are freed — and no more connections than that. Connections holding nothing
 * are never picked (evicting them frees nothing), nor is `spared` (the writer).
 * Runs only when a write crosses `maxTotalMemory`, so sorting the holders is fine.
 */
export function pickVictims (connections: Iterable<Connection>, needed: number, policy: EvictionPolicy, spared: Connection): Connection[] {
  const holders: Connection[] = []
  for (const connection of connections) {
    if (connection !== spared && connection.userDataBytes > 0) holders.push(connection)
  }
  holders.sort(byPolicy[policy])
  const victims: Connection[] = []
  let freed = 0
  for (const connection of holders) {
    if (freed >= needed) break
    victims.push(connection)
    freed += connection.userDataBytes
  }
  return victims
}

/** The user data of every connection, and its total. */
export class UserData {
  /** Bytes held by all connections. */
  total = 0

  constructor (
    private readonly limits: UserDataLimits,
    /** Closes the victims of an eviction (their data is already freed). */
    private readonly evict: (victims: Connection[]) => void
  ) {}

  /**
   * Stores `value` under `key`; `undefined` deletes the key.
   * @throws MemoryLimitExceededError when the write cannot fit (nothing is changed).
   * @throws TypeError when the value cannot be serialized as JSON.
   */
  set (connection: Connection, key: string, value: unknown, everyone: Iterable<Connection>): void {
    const previous = connection.userData?.get(key)
    if (value === undefined) {
      if (previous === undefined) return
      connection.userData?.delete(key)
      this.adjust(connection, -previous.size)
      return
    }
    const json = JSON.stringify(value)
    if (json === undefined) throw new TypeError(`Cannot store a value of type ${typeof value}`)
    const size = Buffer.byteLength(key) + Buffer.byteLength(json)
    const delta = size - (previous?.size ?? 0)
    const held = connection.userDataBytes + delta
    const { maxMemoryPerConnection, maxTotalMemory, memoryEvictionPolicy } = this.limits
    if (maxMemoryPerConnection > 0 && held > maxMemoryPerConnection) {
      throw new MemoryLimitExceededError(`client "${connection.id}" would hold ${held} bytes of user data; maxMemoryPerConnection is ${maxMemoryPerConnection}`)
    }
    if (maxTotalMemory > 0 && this.total + delta > maxTotalMemory) {
      if (held > maxTotalMemory) {
        throw new MemoryLimitExceededError(`client "${connection.id}" would hold ${held} bytes of user data, more than maxTotalMemory (${maxTotalMemory}) on its own`)
      }
      const victims = pickVictims(everyone, this.total + delta - maxTotalMemory, memoryEvictionPolicy, connection)
      for (const victim of victims) this.free(victim)
      this.evict(victims)
    }
    connection.userData ??= new Map()
    connection.userData.set(key, { value, size })
    this.adjust(connection, delta)
  }

  /** Frees everything a connection holds. */
  free (connection: Connection): void {
    this.adjust(connection, -connection.userDataBytes)
    connection.userData = undefined
  }

  /** Moves a connection's data to the connection that continues its session. */
  transfer (from: Connection, to: Connection): void {
    const { userData, userDataBytes } = from
    this.free(from)
    to.userData = userData
    this.adjust(to, userDataBytes)
  }

  /** The data as a session record keeps it: key → JSON text. */
  serialize (connection: Connection): Array<[string, string]> {
    const entries: Array<[string, string]> = []
    for (const [key, { value }] of connection.userData ?? []) entries.push([key, JSON.stringify(value)])
    return entries
  }

  /** Gives a resumed connection the data of its session record. */
  restore (connection: Connection, entries: ReadonlyArray<readonly [string, string]>): void {
    if (entries.length === 0) return
    connection.userData ??= new Map()
    let bytes = 0
    for (const [key, json] of entries) {
      const size = Buffer.byteLength(key) + Buffer.byteLength(json)
      connection.userData.set(key, { value: JSON.parse(json) as unknown, size })
      bytes += size
    }
    this.adjust(connection, bytes)
  }

  private adjust (connection: Connection, delta: number): void {
    connection.userDataBytes += delta
    this.total += delta
  }
}
