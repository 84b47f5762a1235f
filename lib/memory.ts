import type { Connection } from './connection.js'

export type EvictionPolicy = 'lru' | 'oldest' | 'largest'

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
