/**
 * Admission bookkeeping: the slots that admitted upgrades hold against `maxConnections`, the
 * per-IP caps and connect rates, and the ticket that owns both from admission to release.
 */

/**
 * What one admitted upgrade holds: a slot until it becomes a connection (the connection then
 * counts itself), and its IP's count until the connection closes. Released exactly once.
 */
export class AdmissionTicket {
  private holdsSlot = true

  constructor (private readonly gate: AdmissionGate, private ip: string | undefined) {}

  /** The upgrade became a connection: its slot ends; the IP stays counted until `release()`. */
  connected (): void {
    if (!this.holdsSlot) return
    this.holdsSlot = false
    this.gate.reserved--
  }

  /** Gives back whatever the ticket still holds. Idempotent. */
  release (): void {
    this.connected()
    if (this.ip === undefined) return
    this.gate.perIp.release(this.ip)
    this.ip = undefined
  }
}

/** Slots of admitted upgrades not yet connected, and the per-IP limits. */
export class AdmissionGate {
  /** Upgrades admitted but not yet connected; counted against `maxConnections`. */
  reserved = 0
  readonly perIp: PerIpAdmission

  constructor (private readonly maxConnections: number, maxPerIp: number, connectsPerSecond: number) {
    this.perIp = new PerIpAdmission(maxPerIp, connectsPerSecond)
  }

  /** Whether one more connection fits next to `open` ones (a replacement always fits). */
  hasRoom (open: number, replacing: boolean): boolean {
    return replacing || open + this.reserved < this.maxConnections
  }

  /** Reserves a slot, and counts `ip` when per-IP caps are on (undefined otherwise). */
  admit (ip: string | undefined): AdmissionTicket {
    this.reserved++
    if (ip !== undefined) this.perIp.acquire(ip)
    return new AdmissionTicket(this, ip)
  }
}

/**
 * Per-IP admission: a cap on open connections per IP and a connect-rate token bucket per IP.
 * The IP is Fastify's `request.ip`, so `trustProxy` decides whether it is the peer or the
 * client behind a proxy. Memory stays bounded: an IP's count goes when its last connection
 * does, and idle rate buckets are swept once there are many.
 */
export class PerIpAdmission {
  private readonly counts = new Map<string, number>()
  private readonly connects: KeyedRateLimiter | undefined

  constructor (private readonly maxPerIp: number, connectsPerSecond: number) {
    this.connects = connectsPerSecond === 0 ? undefined : new KeyedRateLimiter(connectsPerSecond, 1)
  }

  /** Takes one connect from the IP's bucket; returns 0, or the seconds to wait before retrying. */
  takeConnect (ip: string, now: number): number {
    return this.connects?.take(ip, now) ?? 0
  }

  hasRoom (ip: string): boolean {
    return this.maxPerIp === 0 || (this.counts.get(ip) ?? 0) < this.maxPerIp
  }

  acquire (ip: string): void {
    this.counts.set(ip, (this.counts.get(ip) ?? 0) + 1)
  }

  release (ip: string): void {
    const count = (this.counts.get(ip) ?? 0) - 1
    if (count > 0) this.counts.set(ip, count)
    else this.counts.delete(ip)
  }

  /** IPs holding at least one connection or admitted upgrade. */
  get trackedIps (): number {
    return this.counts.size
  }
}

/**
 * One token bucket per key (an IP, a client id): `capacity` tokens refilled over `perSeconds`.
 * Memory stays bounded: past 10 000 keys, buckets that have refilled completely (the same as
 * no bucket) are swept.
 */
export class KeyedRateLimiter {
  private readonly buckets = new Map<string, { tokens: number, updatedAt: number }>()
  private readonly perMs: number

  constructor (private readonly capacity: number, private readonly perSeconds: number) {
    this.perMs = capacity / (perSeconds * 1000)
  }

  /** Takes one token for `key`; returns 0, or the seconds to wait before one is there. */
  take (key: string, now: number): number {
    const bucket = this.buckets.get(key)
    if (bucket === undefined) {
      if (this.buckets.size >= 10_000) this.sweep(now)
      this.buckets.set(key, { tokens: this.capacity - 1, updatedAt: now })
      return 0
    }
    bucket.tokens = Math.min(this.capacity, bucket.tokens + (now - bucket.updatedAt) * this.perMs)
    bucket.updatedAt = now
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1
      return 0
    }
    return Math.max(1, Math.ceil((1 - bucket.tokens) / this.perMs / 1000))
  }

  private sweep (now: number): void {
    for (const [key, bucket] of this.buckets) {
      if (now - bucket.updatedAt >= this.perSeconds * 1000) this.buckets.delete(key)
    }
  }
}
