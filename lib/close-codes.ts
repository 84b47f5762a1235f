/**
 * The close-code contract, followed by the server and by the client library.
 */

// Standard codes (RFC 6455 §7.4.1) are used where one fits. Application codes are split by
// what the client should do next: 4000–4499 reconnect with backoff; 4500–4999 do not
// reconnect (something must change first). The server never closes a socket with no code
// (the peer would see 1005).
export const CloseCode = {
  /** The server or the client ended the session on purpose. */
  NORMAL: 1000,
  /** The server is going away (shutdown with `shutdownCloseCode: 1001`). Reconnect. */
  GOING_AWAY: 1001,
  /** The socket was dropped without a close frame (never sent; reported for terminated or lost sockets). */
  ABNORMAL: 1006,
  /** An inbound message was larger than `maxMessageSize` (sent by `ws`). Do not resend it. */
  MESSAGE_TOO_BIG: 1009,
  /** The route handler threw or rejected. Reconnect with backoff. */
  INTERNAL_ERROR: 1011,
  /** The client broke the protocol (`ws` framing errors, or a malformed `stabilizer.v1` frame). Do not reconnect: the client is broken. */
  PROTOCOL_ERROR: 1002,
  /** The client sent faster than the server's inbound rate limit. Do not reconnect in a loop. */
  POLICY_VIOLATION: 1008,
  /** The server is restarting (graceful shutdown, the default). Reconnect after the hinted delay. */
  SERVICE_RESTART: 1012,
  /** The server is overloaded (connection limit reached for a manually connected socket). Reconnect later. */
  TRY_AGAIN_LATER: 1013,
  /** Evicted to bring user data back under `maxTotalMemory`. Reconnect with backoff. */
  MEMORY_EVICTED: 4001,
  /** Its outbound buffer passed `maxBufferedAmount` (slowConsumerPolicy 'disconnect'). Reconnect with backoff. */
  SLOW_CONSUMER: 4002,
  /** The reconnect token offered in the subprotocol was invalid, expired or used: reconnect without it (a new session). */
  RESUME_REJECTED: 4003,
  /** Another connection with the same client id took over this one. Do not reconnect: the two would evict each other forever. */
  REPLACED: 4500
} as const

export type CloseCodeName = keyof typeof CloseCode
export type CloseCodeValue = (typeof CloseCode)[CloseCodeName]

export interface CloseCodeInfo {
  readonly code: number
  readonly name: string
  /** Whether a client should reconnect after seeing this code. */
  readonly reconnect: boolean
  readonly description: string
}

/** The table the README documents, one row per code the server can produce. */
export const closeCodeTable: readonly CloseCodeInfo[] = [
  { code: CloseCode.NORMAL, name: 'NORMAL', reconnect: false, description: 'The session was ended on purpose (`disconnect()` default).' },
  { code: CloseCode.GOING_AWAY, name: 'GOING_AWAY', reconnect: true, description: 'Shutdown with `shutdownCloseCode: 1001`.' },
  { code: CloseCode.ABNORMAL, name: 'ABNORMAL', reconnect: true, description: 'Never sent: reported to `onDisconnect` when a socket was terminated or lost without a close frame.' },
  { code: CloseCode.PROTOCOL_ERROR, name: 'PROTOCOL_ERROR', reconnect: false, description: 'The client broke the WebSocket protocol or sent a malformed `stabilizer.v1` frame.' },
  { code: CloseCode.POLICY_VIOLATION, name: 'POLICY_VIOLATION', reconnect: false, description: 'The client sent faster than `inboundMessageRate`/`inboundByteRate` (`rateLimitPolicy: \'close\'`).' },
  { code: CloseCode.MESSAGE_TOO_BIG, name: 'MESSAGE_TOO_BIG', reconnect: true, description: 'An inbound message exceeded `maxMessageSize`; reconnect, but do not resend it.' },
  { code: CloseCode.INTERNAL_ERROR, name: 'INTERNAL_ERROR', reconnect: true, description: 'The route handler threw or rejected.' },
  { code: CloseCode.SERVICE_RESTART, name: 'SERVICE_RESTART', reconnect: true, description: 'Graceful shutdown (default); the reason carries `retry-after-ms=N`, a per-client spread delay.' },
  { code: CloseCode.TRY_AGAIN_LATER, name: 'TRY_AGAIN_LATER', reconnect: true, description: 'A manually connected socket was refused at `maxConnections`.' },
  { code: CloseCode.MEMORY_EVICTED, name: 'MEMORY_EVICTED', reconnect: true, description: 'Evicted by `memoryEvictionPolicy` to bring user data back under `maxTotalMemory`.' },
  { code: CloseCode.SLOW_CONSUMER, name: 'SLOW_CONSUMER', reconnect: true, description: 'The outbound buffer passed `maxBufferedAmount` (`slowConsumerPolicy: \'disconnect\'`).' },
  { code: CloseCode.RESUME_REJECTED, name: 'RESUME_REJECTED', reconnect: true, description: 'The reconnect token offered in the `stabilizer.token.*` subprotocol was invalid, expired or already used; the reason says which. Reconnect without it: a new session.' },
  { code: CloseCode.REPLACED, name: 'REPLACED', reconnect: false, description: 'A newer connection with the same client id replaced this one.' }
]

/**
 * Whether a client should reconnect after a close with `code`.
 * Unknown application codes follow the ranges: 4000–4499 reconnect, 4500–4999 do not.
 */
export function shouldReconnect (code: number): boolean {
  const known = closeCodeTable.find((row) => row.code === code)
  if (known !== undefined) return known.reconnect
  if (code >= 4000 && code <= 4499) return true
  if (code >= 4500 && code <= 4999) return false
  // Unknown standard codes (1005 no status, 1015 TLS…): a transient failure is the safer guess.
  return code !== 1002 && code !== 1003 && code !== 1007 && code !== 1008 && code !== 1010
}
