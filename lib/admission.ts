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
