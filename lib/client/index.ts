/**
 * `fastify-websocket-stabilizer/client`, for browsers and Node: a WebSocket that reconnects,
 * resumes (`stabilizer.v1`, PROTOCOL.md), detects a dead server and queues while offline.
 */
import { shouldReconnect } from '../close-codes.js'
import { encodePositions, parseBinaryMessage, positionsProtocolPrefix, subprotocol, tokenProtocolPrefix, type Positions, type ResumeReport, type Welcome } from '../protocol.js'
import { backoffDelay, clampDelay, type BackoffOptions } from './backoff.js'

export { backoffDelay, clampDelay, type BackoffOptions } from './backoff.js'
export type { Positions, ResumeReport } from '../protocol.js'

/**
 * An event handler property. Its parameter is checked both ways (as for a method): the DOM's
 * and `ws`'s handlers take their own, richer event types, and each must be assignable here.
 */
type Handler<E> = { bivarianceHack (event: E): void }['bivarianceHack'] | null

/** The part of the WebSocket API the client uses: the browser's `WebSocket` and `ws`'s both fit. */
export interface WebSocketLike {
  readonly readyState: number
  readonly protocol: string
  binaryType: string
  onopen: Handler<unknown>
  onmessage: Handler<{ data: unknown }>
  onclose: Handler<{ code: number, reason: string }>
  onerror: Handler<unknown>
  send: (data: string | ArrayBuffer | ArrayBufferView) => void
  close: (code?: number, reason?: string) => void
}

/** A WebSocket class: the global `WebSocket` or `import { WebSocket } from 'ws'`, without a cast. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike

export interface StabilizedWebSocketOptions extends BackoffOptions {
  /** The WebSocket implementation; default the global `WebSocket`. */
  WebSocket?: WebSocketConstructor
  /** Attempts after which the client gives up (a `close` with `willRetry: false`). Default Infinity. */
  maxRetries?: number
  /** Offline queue bounds: messages (default 1 000), bytes (default 1 MiB), age in ms (default 60 000). */
  queueMaxMessages?: number
  queueMaxBytes?: number
  queueMaxAge?: number
  /** Random source of the backoff jitter (tests). Default Math.random. */
  random?: () => number
}

export type SendResult = 'sent' | 'queued' | 'dropped'

/** What a resume gave back (the welcome's `resume`), and whether the server refused the token. */
export interface ResumeOutcome extends ResumeReport {
  /** Set when the server refused the token (close 4003): the reason; a new session began. */
  rejected?: string
}

/** The events of a StabilizedWebSocket; each carries its details as properties. */
export class StabilizedEvent extends Event {
  data?: unknown
  code?: number
  reason?: string
  willRetry?: boolean
  attempt?: number
  delay?: number
  resume?: ResumeOutcome

  constructor (type: string, init: Partial<Pick<StabilizedEvent, 'data' | 'code' | 'reason' | 'willRetry' | 'attempt' | 'delay' | 'resume'>> = {}) {
    super(type)
    Object.assign(this, init)
  }
}

const CONNECTING = 0
const OPEN = 1
const CLOSING = 2
const CLOSED = 3

/**
 * A reconnecting WebSocket speaking `stabilizer.v1`. Events: `open` (a session is ready),
 * `message` (`data` without the envelope; duplicates of a replay are dropped), `close` (`code`,
 * `reason`, `willRetry`), `reconnecting` (`attempt`, `delay`), `resumed` (`resume`: outcome,
 * counts and `historyLost`), `error`.
 */
export class StabilizedWebSocket extends EventTarget {
  static readonly CONNECTING = CONNECTING
  static readonly OPEN = OPEN
  static readonly CLOSING = CLOSING
  static readonly CLOSED = CLOSED

  onopen: ((event: StabilizedEvent) => void) | null = null
  onmessage: ((event: StabilizedEvent) => void) | null = null
  onclose: ((event: StabilizedEvent) => void) | null = null
  onreconnecting: ((event: StabilizedEvent) => void) | null = null
  onresumed: ((event: StabilizedEvent) => void) | null = null
  onerror: ((event: StabilizedEvent) => void) | null = null

  /** The client id and session the server gave (after the first `open`). */
  clientId: string | undefined = undefined
  sessionId: string | undefined = undefined
  /** Messages the offline queue dropped (full or too old). */
  droppedMessages = 0

  private socket: WebSocketLike | undefined = undefined
  private token: string | null = null
  private ready = false
  private closed = false
  private attempt = 0
  /** Per stream followed: the epoch and seq of the last message received (or given by welcome / follow). */
  private readonly held = new Map<string, [epoch: string, seq: number]>()
  private pendingRejection: { reason: string, hadPositions: boolean } | undefined = undefined
  private heartbeatDeadline = 0
  private lastSeenAt = 0
  private suspect = false
  private readonly queue: Array<{ data: string | ArrayBuffer | ArrayBufferView, bytes: number, at: number }> = []
  private queuedBytes = 0
  private readonly timers = new Set<ReturnType<typeof setTimeout>>()
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined = undefined
  private readonly options: StabilizedWebSocketOptions
  private readonly Impl: WebSocketConstructor
  private readonly onOnline = (): void => { if (this.reconnectTimer !== undefined) this.reconnectNow() }

  constructor (readonly url: string, options: StabilizedWebSocketOptions = {}) {
    super()
    this.options = options
    const Impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
    if (Impl === undefined) throw new TypeError('No WebSocket implementation: pass one as the `WebSocket` option (e.g. from the ws package)')
    this.Impl = Impl
    ;(globalThis as { addEventListener?: (type: string, listener: () => void) => void }).addEventListener?.('online', this.onOnline)
    this.connect()
  }

  /** CONNECTING while (re)connecting, OPEN once a session is ready, CLOSED after `close()`. */
  get readyState (): number {
    if (this.closed) return this.socket === undefined ? CLOSED : CLOSING
    return this.ready ? OPEN : CONNECTING
  }

  /**
   * Where the client stands in each stream it follows (a copy): what it offers when it resumes.
   * Empty before the first welcome and after a refused resume.
   */
  get positions (): Positions {
    const positions: Positions = {}
    for (const [stream, [epoch, seq]] of this.held) positions[stream] = [epoch, seq]
    return positions
  }

  /** Messages waiting in the offline queue. */
  get queuedMessages (): number {
    return this.queue.length
  }

  /**
   * Sends now when a session is open; otherwise queues (bounded: the oldest go first, counted
   * in `droppedMessages`). `dropped` after `close()` or for a message larger than the queue.
   */
  send (data: string | ArrayBuffer | ArrayBufferView): SendResult {
    if (this.closed) return 'dropped'
    if (this.ready && this.socket !== undefined) {
      this.write(data)
      return 'sent'
    }
    const bytes = typeof data === 'string' ? data.length * 3 : data.byteLength
    const maxBytes = this.options.queueMaxBytes ?? 1_048_576
    if (bytes > maxBytes) {
      this.droppedMessages++
      return 'dropped'
    }
    this.queue.push({ data, bytes, at: Date.now() })
    this.queuedBytes += bytes
    while (this.queue.length > (this.options.queueMaxMessages ?? 1000) || this.queuedBytes > maxBytes) this.dropOldest()
    return 'queued'
  }

  /** Closes for good: no reconnect, every timer cleared. */
  close (code = 1000, reason = ''): void {
    if (this.closed) return
    this.closed = true
    this.ready = false
    this.clearTimers()
    this.stopListeningOnline()
    const socket = this.socket
    if (socket === undefined || socket.readyState === CLOSED) {
      this.socket = undefined
      this.emit('close', { code, reason, willRetry: false })
      return
    }
    socket.close(code, reason)
  }

  // ---- connection lifecycle ----------------------------------------------------------------

  private connect (): void {
    const protocols = [subprotocol]
    if (this.token !== null) {
      protocols.push(tokenProtocolPrefix + this.token)
      // Positions a server would refuse (too many or too long) are not offered: resuming without them beats a refused upgrade.
      const offer = this.held.size > 0 ? encodePositions(this.positions) : undefined
      if (offer !== undefined) protocols.push(positionsProtocolPrefix + offer)
    }
    // A bad URL throws here, from the constructor: it would fail on every attempt.
    const socket = new this.Impl(this.url, protocols)
    this.socket = socket
    socket.binaryType = 'arraybuffer'
    socket.onopen = () => {
      // A server that did not select the protocol: a plain connection, ready at once.
      if (socket.protocol !== subprotocol) this.sessionReady()
    }
    socket.onmessage = (event) => { this.receive(event.data) }
    socket.onerror = () => { this.emit('error') }
    socket.onclose = (event) => { this.socketClosed(socket, event.code, event.reason) }
  }

  private receive (data: unknown): void {
    this.lastSeenAt = Date.now()
    this.suspect = false
    const socket = this.socket
    if (socket === undefined) return
    if (socket.protocol !== subprotocol) {
      this.emit('message', { data })
      return
    }
    if (typeof data !== 'string') {
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array((data as ArrayBufferView).buffer, (data as ArrayBufferView).byteOffset, (data as ArrayBufferView).byteLength)
      const message = parseBinaryMessage(bytes)
      if (message !== undefined) this.delivered(message.stream, message.epoch, message.seq, message.payload.slice().buffer)
      return
    }
    let frame: { t?: string, c?: unknown, e?: unknown, s?: unknown, d?: string, ts?: number, token?: string | null, expiresAt?: number }
    try {
      frame = JSON.parse(data) as typeof frame
    } catch {
      return
    }
    const { c: stream, e: epoch, s: seq } = frame
    const positioned = typeof stream === 'string' && typeof epoch === 'string' && typeof seq === 'number'
    switch (frame.t) {
      case 'welcome':
        this.welcomed(frame as unknown as Welcome)
        break
      case 'm':
        // Without a (complete) position: delivered, never replayed, positions unchanged.
        if (positioned) this.delivered(stream, epoch, seq, frame.d)
        else this.emit('message', { data: frame.d })
        break
      case 'follow':
        if (positioned) this.advance(stream, epoch, seq)
        break
      case 'unfollow':
        if (typeof stream === 'string') this.held.delete(stream)
        break
      case 'ping':
        socket.send(JSON.stringify({ t: 'pong', ts: frame.ts }))
        break
      case 'token':
        if (typeof frame.token === 'string') {
          this.token = frame.token
          this.scheduleTokenRefresh(frame.expiresAt!)
        }
        break
    }
  }

  private welcomed (welcome: Welcome): void {
    this.clientId = welcome.clientId
    this.sessionId = welcome.sessionId
    // The server's list is the truth: streams it no longer has the session follow are forgotten.
    this.held.clear()
    for (const [stream, position] of Object.entries(welcome.positions ?? {})) {
      if (Array.isArray(position) && typeof position[0] === 'string' && typeof position[1] === 'number') this.held.set(stream, [position[0], position[1]])
    }
    this.token = welcome.token
    if (welcome.tokenExpiresAt !== null) this.scheduleTokenRefresh(welcome.tokenExpiresAt)
    const { interval, timeout } = welcome.heartbeat
    this.heartbeatDeadline = interval > 0 ? interval + (timeout > 0 ? timeout : interval) : 0
    if (this.heartbeatDeadline > 0) this.watch()
    const rejection = this.pendingRejection
    this.pendingRejection = undefined
    this.sessionReady()
    // A refused token means a new session: what was missed is lost whenever there were positions to offer.
    const resume = welcome.resume ?? (rejection === undefined ? undefined : { outcome: 'none' as const, stateRestored: false, replayed: 0, missed: 0, historyLost: rejection.hadPositions })
    if (resume !== undefined) this.emit('resumed', { resume: rejection === undefined ? resume : { ...resume, rejected: rejection.reason } })
  }

  /** A session is ready: flush the offline queue in order, then tell the app. */
  private sessionReady (): void {
    this.ready = true
    this.attempt = 0
    this.lastSeenAt = Date.now()
    const now = Date.now()
    const maxAge = this.options.queueMaxAge ?? 60_000
    for (const item of this.queue.splice(0)) {
      if (now - item.at > maxAge) this.droppedMessages++
      else this.write(item.data)
    }
    this.queuedBytes = 0
    this.emit('open')
  }

  /** A message of a stream (stream '' for one without a position): delivered unless it is a duplicate. */
  private delivered (stream: string, epoch: string, seq: number, data: unknown): void {
    if (stream === '' || this.advance(stream, epoch, seq)) this.emit('message', { data })
  }

  /** Moves a stream's position forward; false when `seq` is not past the position held in the same epoch. */
  private advance (stream: string, epoch: string, seq: number): boolean {
    const held = this.held.get(stream)
    if (held !== undefined && held[0] === epoch && seq <= held[1]) return false
    // Another epoch: the stream's history was lost, so its numbering starts over.
    this.held.set(stream, [epoch, seq])
    return true
  }

  private write (data: string | ArrayBuffer | ArrayBufferView): void {
    const socket = this.socket!
    if (typeof data === 'string' && socket.protocol === subprotocol) socket.send(JSON.stringify({ t: 'm', d: data }))
    else socket.send(data)
  }

  private socketClosed (socket: WebSocketLike, code: number, reason: string): void {
    if (socket !== this.socket) return
    this.socket = undefined
    this.ready = false
    this.clearTimers()
    if (this.closed) {
      this.emit('close', { code, reason, willRetry: false })
      return
    }
    if (code === 4003) {
      // The token was refused: start a new session right away, from no position.
      this.token = null
      this.pendingRejection = { reason, hadPositions: this.held.size > 0 }
      this.held.clear()
    }
    const attempt = ++this.attempt
    const willRetry = shouldReconnect(code) && attempt <= (this.options.maxRetries ?? Infinity)
    this.emit('close', { code, reason, willRetry })
    if (!willRetry) {
      this.closed = true
      this.stopListeningOnline()
      return
    }
    this.scheduleReconnect(code === 4003 ? 0 : this.delayAfter(code, reason, attempt))
  }

  /**
   * Backoff, or the server's hint: `retry-after-ms=N` in the reason (1012 at shutdown), kept
   * within [minDelay, maxDelay]; at least 5 s after 1013.
   */
  private delayAfter (code: number, reason: string, attempt: number): number {
    const hint = /retry-after-ms=(\d+)/.exec(reason)
    if (hint !== null) return clampDelay(Number(hint[1]), this.options)
    const delay = backoffDelay(attempt, this.options, this.options.random)
    return code === 1013 ? Math.max(delay, 5000) : delay
  }

  private scheduleReconnect (delay: number): void {
    if (this.closed) return
    this.emit('reconnecting', { attempt: this.attempt, delay })
    if (this.closed) return
    this.reconnectTimer = this.later(() => {
      this.reconnectTimer = undefined
      // Offline (browsers): wait for the 'online' event instead of burning attempts.
      if ((globalThis as { navigator?: { onLine?: boolean } }).navigator?.onLine === false) this.reconnectTimer = this.later(() => this.reconnectNow(), 2 ** 31 - 1)
      else this.connect()
    }, delay)
  }

  private reconnectNow (): void {
    if (this.reconnectTimer !== undefined) this.forget(this.reconnectTimer)
    this.reconnectTimer = undefined
    if (!this.closed && this.socket === undefined) this.connect()
  }

  /**
   * The dead-server watchdog: no frame for `interval + timeout` of wall time → the socket is
   * dropped. A check that itself ran late (a throttled background tab) only makes the server
   * a suspect; the verdict waits for one more check, after the pending events have run.
   */
  private watch (): void {
    const period = Math.max(50, Math.min(1000, this.heartbeatDeadline / 10))
    const expected = Date.now() + period
    this.later(() => {
      const socket = this.socket
      if (socket === undefined || !this.ready) return
      const now = Date.now()
      const late = now - expected > period
      if (now - this.lastSeenAt > this.heartbeatDeadline) {
        if (late || !this.suspect) {
          this.suspect = true
        } else {
          this.drop(socket)
          return
        }
      }
      this.watch()
    }, period)
  }

  /** Drops a socket the watchdog found dead and reconnects at once (it was not the client's fault). */
  private drop (socket: WebSocketLike): void {
    socket.onclose = null
    socket.onmessage = null
    socket.close(4000, 'no heartbeat')
    this.socket = undefined
    this.ready = false
    this.clearTimers()
    this.emit('close', { code: 4000, reason: 'no heartbeat', willRetry: true })
    this.scheduleReconnect(0)
  }

  private scheduleTokenRefresh (expiresAt: number): void {
    const lifetime = expiresAt - Date.now()
    if (lifetime <= 0) return
    // At 80 % of its life, so a reconnect never presents an expired token.
    this.later(() => this.socket?.send('{"t":"token"}'), Math.max(1000, lifetime * 0.8))
  }

  private dropOldest (): void {
    const oldest = this.queue.shift()!
    this.queuedBytes -= oldest.bytes
    this.droppedMessages++
  }

  private stopListeningOnline (): void {
    ;(globalThis as { removeEventListener?: (type: string, listener: () => void) => void }).removeEventListener?.('online', this.onOnline)
  }

  private later (fn: () => void, ms: number): ReturnType<typeof setTimeout> {
    const timer = setTimeout(() => {
      this.timers.delete(timer)
      fn()
    }, Math.min(ms, 2 ** 31 - 1))
    this.timers.add(timer)
    return timer
  }

  private forget (timer: ReturnType<typeof setTimeout>): void {
    clearTimeout(timer)
    this.timers.delete(timer)
  }

  private clearTimers (): void {
    for (const timer of this.timers) clearTimeout(timer)
    this.timers.clear()
    this.reconnectTimer = undefined
  }

  private emit (type: string, init?: ConstructorParameters<typeof StabilizedEvent>[1]): void {
    const event = new StabilizedEvent(type, init)
    const handler = (this as unknown as Record<string, ((event: StabilizedEvent) => void) | null>)[`on${type}`]
    handler?.call(this, event)
    this.dispatchEvent(event)
  }
}
