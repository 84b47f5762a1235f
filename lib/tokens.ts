/** Reconnect tokens: stateless signed claims, and the service that issues, verifies and redeems them. */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { InvalidTokenError, TokenExpiredError } from './errors.js'
import { KeyedRateLimiter } from './admission.js'

/** What a reconnect token carries (signed). Times are ms since the epoch. */
export interface TokenClaims {
  /** Client id. */
  cid: string
  /** Session id: which session of that client the token resumes. */
  sid: string
  /** Issued at. */
  iat: number
  /** Expires at. */
  exp: number
  /** Unique token id, for single use. */
  jti: string
  /** Id of the key that signed it. */
  kid: string
}

/** Longest token accepted, in characters (a 256-character client id fits with room to spare). */
export const maxTokenLength = 2048
/** How far in the future `iat` may be (clock skew between instances). */
const clockSkewMs = 5_000
const base64url = /^[A-Za-z0-9_-]+$/

/** A key id names a secret without revealing it: the first 8 bytes of its SHA-256. */
function keyId (secret: string): string {
  return createHash('sha256').update(secret).digest().subarray(0, 8).toString('base64url')
}

/**
 * Signs and verifies stateless reconnect tokens: `base64url(JSON claims).base64url(HMAC-SHA256)`.
 * The first secret signs; every secret verifies (rotate keys without logging anyone out).
 * Verification is length-capped, strictly parsed and compares signatures in constant time;
 * it throws only `InvalidTokenError` or `TokenExpiredError`.
 */
export class TokenSigner {
  private readonly keys: Map<string, Buffer>
  private readonly signingKid: string

  constructor (secrets: readonly string[]) {
    if (secrets.length === 0) throw new RangeError('at least one secret is needed')
    this.keys = new Map(secrets.map((secret) => [keyId(secret), Buffer.from(secret)]))
    this.signingKid = keyId(secrets[0])
  }

  /** A fresh random secret, for when none is configured (tokens then die with the process). */
  static randomSecret (): string {
    return randomBytes(32).toString('base64url')
  }

  sign (clientId: string, sessionId: string, ttlMs: number, now = Date.now()): { token: string, claims: TokenClaims } {
    const claims: TokenClaims = { cid: clientId, sid: sessionId, iat: now, exp: now + ttlMs, jti: randomBytes(16).toString('base64url'), kid: this.signingKid }
    const payload = Buffer.from(JSON.stringify(claims)).toString('base64url')
    return { token: `${payload}.${this.mac(this.keys.get(this.signingKid)!, payload).toString('base64url')}`, claims }
  }

  /**
   * The claims of an authentic, current token (not yet redeemed: the caller does that).
   * @throws InvalidTokenError for anything malformed, tampered, signed by an unknown key or not yet valid.
   * @throws TokenExpiredError for an authentic token past its expiry.
   */
  verify (token: unknown, now = Date.now()): TokenClaims {
    if (typeof token !== 'string' || token.length === 0 || token.length > maxTokenLength) throw new InvalidTokenError('malformed')
    const dot = token.indexOf('.')
    const payload = token.slice(0, dot)
    const signature = token.slice(dot + 1)
    if (dot <= 0 || !base64url.test(payload) || !base64url.test(signature) || signature.length !== 43) throw new InvalidTokenError('malformed')
    const claims = parseClaims(payload)
    const key = this.keys.get(claims.kid)
    if (key === undefined) throw new InvalidTokenError('unknown key')
    const given = Buffer.from(signature, 'base64url')
    // Re-encoding must give back the same text: no second spelling of one signature.
    if (given.toString('base64url') !== signature || !timingSafeEqual(given, this.mac(key, payload))) throw new InvalidTokenError('bad signature')
    if (claims.iat > now + clockSkewMs) throw new InvalidTokenError('not yet valid')
    if (now >= claims.exp) throw new TokenExpiredError()
    return claims
  }

  private mac (key: Buffer, payload: string): Buffer {
    return createHmac('sha256', key).update(payload).digest()
  }
}

function parseClaims (payload: string): TokenClaims {
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'))
  } catch {
    throw new InvalidTokenError('malformed')
  }
  const claims = value as Partial<TokenClaims> | null
  if (
    claims === null || typeof claims !== 'object' ||
    typeof claims.cid !== 'string' || claims.cid.length === 0 || claims.cid.length > 256 ||
    typeof claims.sid !== 'string' || typeof claims.jti !== 'string' || typeof claims.kid !== 'string' ||
    !Number.isSafeInteger(claims.iat) || !Number.isSafeInteger(claims.exp)
  ) {
    throw new InvalidTokenError('malformed')
  }
  return claims as TokenClaims
}

/**
 * Reconnect tokens as a service: issued for a client's current session, verified, redeemed
 * once across every instance through the adapter, and requested at a bounded rate per client.
 */
export class ReconnectTokens {
  private readonly signer: TokenSigner
  private readonly requests: KeyedRateLimiter
  /** Whether tokens are signed with a random per-process key (no `secrets` configured). */
  readonly ephemeral: boolean

  constructor (
    secrets: readonly string[] | undefined,
    private readonly ttlMs: number,
    requestsPerMinute: number,
    private readonly redeemer: { redeemToken: (tokenId: string, expiresAt: number) => Promise<boolean> }
  ) {
    this.ephemeral = secrets === undefined
    this.signer = new TokenSigner(secrets ?? [TokenSigner.randomSecret()])
    this.requests = new KeyedRateLimiter(requestsPerMinute, 60)
  }

  issue (clientId: string, sessionId: string): { token: string, expiresAt: number } {
    const { token, claims } = this.signer.sign(clientId, sessionId, this.ttlMs)
    return { token, expiresAt: claims.exp }
  }

  /** @throws InvalidTokenError | TokenExpiredError */
  verify (token: unknown): TokenClaims {
    return this.signer.verify(token)
  }

  /** Redeems a verified token: false if it was already used (on any instance). */
  async redeem (claims: TokenClaims): Promise<boolean> {
    return await this.redeemer.redeemToken(claims.jti, claims.exp)
  }

  /** Takes one token request of the client's budget: 0, or the seconds to wait. */
  takeRequest (clientId: string): number {
    return this.requests.take(clientId, performance.now())
  }
}
