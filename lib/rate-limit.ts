/**
 * Token buckets for a connection's inbound messages and bytes: each holds one second of its
 * rate and refills continuously ("at most N per second over any one-second window").
 */
export class InboundBudget {
  private messages: number
  private bytes: number
  private updatedAt: number

  constructor (private readonly messageRate: number, private readonly byteRate: number, now: number) {
    this.messages = messageRate
    this.bytes = byteRate
    this.updatedAt = now
  }

  /** Takes one message of `size` bytes from the buckets; false when either is exhausted. */
  take (size: number, now: number): boolean {
    const elapsed = (now - this.updatedAt) / 1000
    this.updatedAt = now
    if (this.messageRate > 0) {
      this.messages = Math.min(this.messageRate, this.messages + elapsed * this.messageRate)
      if (this.messages < 1) return false
    }
    if (this.byteRate > 0) {
      this.bytes = Math.min(this.byteRate, this.bytes + elapsed * this.byteRate)
      if (this.bytes < size) return false
    }
    this.messages -= 1
    this.bytes -= size
    return true
  }
}

/** The byte length of what ws hands to 'message' listeners (Buffer, ArrayBuffer or fragments). */
export function inboundSize (data: unknown): number {
  if (Buffer.isBuffer(data)) return data.length
  if (data instanceof ArrayBuffer) return data.byteLength
  if (Array.isArray(data)) return data.reduce((sum: number, part: Buffer) => sum + part.length, 0)
  return 0
}
