/** Reconnect delays: exponential, capped, with full jitter over [floor, ceiling]. */
export interface BackoffOptions {
  /** Shortest delay, ms. Default 250. */
  minDelay?: number
  /** The ceiling of the first attempt, ms; it doubles per attempt. Default 1 000. */
  initialDelay?: number
  /** Largest ceiling, ms. Default 30 000. */
  maxDelay?: number
}

const defaultMinDelay = 250
const defaultInitialDelay = 1000
const defaultMaxDelay = 30_000

/**
 * The delay before reconnect attempt `attempt` (1, 2, …): uniformly random between
 * `minDelay` and `min(maxDelay, initialDelay × 2^(attempt−1))`. Full jitter: clients that lost
 * their server together spread out, and stay spread at the cap (never all at exactly `maxDelay`).
 */
export function backoffDelay (attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const floor = options.minDelay ?? defaultMinDelay
  const ceiling = Math.max(floor, Math.min(options.maxDelay ?? defaultMaxDelay, (options.initialDelay ?? defaultInitialDelay) * 2 ** Math.min(attempt - 1, 30)))
  return Math.round(floor + random() * (ceiling - floor))
}

/** A delay the server hinted, kept within [minDelay, maxDelay]. */
export function clampDelay (ms: number, options: BackoffOptions = {}): number {
  const floor = options.minDelay ?? defaultMinDelay
  return Math.min(Math.max(ms, floor), Math.max(floor, options.maxDelay ?? defaultMaxDelay))
}
