/**
 * The scale-out seam: state that must be shared by every instance behind a load balancer goes
 * through an adapter. The default keeps it in this process; a Redis adapter implements the
 * same interface.
 */
export interface StabilizerAdapter {
  /**
   * Records that a reconnect token was used. Resolves false if it already was (a replay).
   * The record may be forgotten once `expiresAt` (ms since the epoch) has passed.
   */
  redeemToken: (tokenId: string, expiresAt: number) => Promise<boolean>
}

/**
 * The in-process adapter. Redeemed token ids are kept until they expire, at most
 * `maxRedeemedTokens` of them: past that it fails closed (a token that cannot be recorded is
 * refused), so size it above the tokens redeemed within one `reconnectTokenTtl`.
 */
export class MemoryAdapter implements StabilizerAdapter {
  /** Token id → expiry; insertion order is nearly expiry order (one TTL for all tokens). */
  private readonly redeemed = new Map<string, number>()

  constructor (private readonly maxRedeemedTokens = 100_000) {}

  async redeemToken (tokenId: string, expiresAt: number): Promise<boolean> {
    const now = Date.now()
    for (const [id, expiry] of this.redeemed) {
      if (expiry > now) break
      this.redeemed.delete(id)
    }
    if (this.redeemed.has(tokenId)) return false
    if (this.redeemed.size >= this.maxRedeemedTokens) {
      // Tokens from instances with another TTL break the order: sweep them all before refusing.
      for (const [id, expiry] of this.redeemed) if (expiry <= now) this.redeemed.delete(id)
      if (this.redeemed.size >= this.maxRedeemedTokens) return false
    }
    this.redeemed.set(tokenId, expiresAt)
    return true
  }

  /** Redeemed token ids still remembered. */
  get size (): number {
    return this.redeemed.size
  }
}
