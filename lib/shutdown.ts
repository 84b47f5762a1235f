/** The graceful drain: close every socket with the shutdown code, wait until the deadline, terminate the rest. */
import { setTimeout as sleep } from 'node:timers/promises'
import type { Connection } from './connection.js'
import { paced } from './paced.js'

/** What a graceful shutdown did. */
export interface ShutdownReport {
  /** Sockets open or closing when the shutdown began. */
  total: number
  /** Sockets whose close handshake completed before the deadline. */
  closedGracefully: number
  /** Sockets destroyed because they had not closed by the deadline. */
  terminated: number
  /** Wall time of the drain, in milliseconds. */
  durationMs: number
}

export type LifecycleState = 'running' | 'draining' | 'closed'

export interface DrainPlan {
  connections: readonly Connection[]
  deadlineMs: number
  closesPerTurn: number
  /** Starts one connection's close; false when it was already closing. */
  close: (connection: Connection) => boolean
  terminate: (connection: Connection) => void
}

/** How long to wait for the 'close' events that follow terminate(); they come within a few ticks. */
const terminateGraceMs = 100

/**
 * The drain: close every socket with the shutdown code, wait for the handshakes until the
 * deadline, then terminate whatever is left. Never waits past deadline + terminateGraceMs.
 */
export async function drain (plan: DrainPlan): Promise<ShutdownReport> {
  const started = performance.now()
  const { connections } = plan
  await paced(connections, plan.closesPerTurn, plan.close)

  const remaining = Math.max(0, plan.deadlineMs - (performance.now() - started))
  await waitAll(connections, remaining)

  let terminatedNow = 0
  for (const connection of connections) {
    if (connection.state !== 'closed') {
      plan.terminate(connection)
      terminatedNow++
    }
  }
  if (terminatedNow > 0) await waitAll(connections, terminateGraceMs)

  // Counted by flag: a socket that was already closing when the drain began (a replaced
  // one) may have been terminated by its own close timeout.
  const terminated = connections.filter((connection) => connection.terminated).length
  return {
    total: connections.length,
    closedGracefully: connections.length - terminated,
    terminated,
    durationMs: Math.round(performance.now() - started)
  }
}

/** Resolves when every connection has closed or `ms` has passed, leaving no timer behind. */
async function waitAll (connections: readonly Connection[], ms: number): Promise<void> {
  const open = connections.filter((connection) => connection.state !== 'closed')
  if (open.length === 0) return
  const timer = new AbortController()
  try {
    await Promise.race([
      Promise.all(open.map((connection) => connection.whenClosed())),
      // Aborted once the race is settled; the rejection that follows is expected.
      sleep(ms, undefined, { signal: timer.signal, ref: false }).catch(() => {})
    ])
  } finally {
    timer.abort()
  }
}
