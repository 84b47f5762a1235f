/**
 * The Redis adapter's receiving side: the streams this instance follows, each delivered once
 * and in order, with gaps filled from the stream's log before they are skipped.
 */
import { clientStream, type StreamEntry, type StreamPosition, type StreamRead } from './adapter.js'

/** What the buffer needs from the adapter. */
export interface StreamSource {
  readonly instanceId: string
  /** How long a gap is held for its missing entry before the log is read. */
  readonly gapTimeout: number
  readonly channelOf: (stream: string) => string
  readonly subscribe: (channels: string[]) => Promise<void>
  readonly unsubscribe: (channels: string[]) => Promise<void>
  /** Where a subscription asked for at `since` (ms since the epoch) starts. */
  readonly start: (stream: string, since: number) => Promise<StreamStart>
  readonly read: (stream: string, after: StreamPosition, limit: number) => Promise<StreamRead>
  readonly deliver: (entry: StreamEntry) => unknown
  /** Whether the subscriber connection can take SUBSCRIBE now. */
  readonly subscriberReady: () => boolean
}

/**
 * A stream's top, and `before`: the last seq published before the subscription was asked for.
 * The entries after `before` were published since, some while the subscription was not live
 * yet: they are read from the log, so that a client that joined on this instance gets every
 * message published after its join on any instance.
 */
export interface StreamStart {
  top: StreamPosition
  before: number
}

const fillPage = 500
const clientStreamPrefix = clientStream('')
const noop = (): void => {}
/** Entries read back after a reconnect or a failover, to find positions a lagging replica re-issued. */
export const lookbackAfterReconnect = 100
const keptResultsMs = 30_000

interface Deferred {
  promise: Promise<void>
  resolve: () => void
}

function deferred (): Deferred {
  let resolve!: () => void
  const promise = new Promise<void>((_resolve) => { resolve = _resolve })
  return { promise, resolve }
}

class StreamState {
  count = 1
  /** Set once the subscription is acknowledged and the starting position is known. */
  epoch: string | undefined = undefined
  /** The last seq delivered (or skipped) in `epoch`. */
  last = 0
  /** The highest seq known to exist in `epoch`. */
  highest = 0
  /** The ts of the last entry delivered in `epoch`. */
  lastTs = 0
  /** Notifications that arrived before the starting position was known. */
  early: StreamEntry[] = []
  /** Entries that arrived ahead of a gap, by seq. */
  readonly pending = new Map<number, StreamEntry>()
  /** This instance's own entries waiting for delivery, by `epoch:seq` (they fill a gap the log cannot). */
  readonly own = new Map<string, StreamEntry>()
  readonly active = deferred()
  /** Set once `active` resolved. */
  live = false
  /** What `deliver` returned for the last fanned-out entry (a fan-out may span turns). */
  delivering: Promise<unknown> | undefined = undefined
  activating = false
  gapTimer: NodeJS.Timeout | undefined = undefined
  filling = false
  /** The lookback of a fill to the top asked for while another fill was reading. */
  refillLookback: number | undefined = undefined
  closed = false

  /** When the subscription was asked for (ms since the epoch): what is published after it is delivered. */
  readonly since = Date.now()

  constructor (readonly stream: string, readonly channel: string) {}

  get started (): boolean {
    return this.epoch !== undefined
  }
}

function key (epoch: string, seq: number): string {
  return `${epoch}:${seq}`
}

/** Decodes a notification: `<epoch> <seq> <ts> <[binary, origin, exclude]>\n<payload>`. */
export function decodeNotification (stream: string, message: Buffer): StreamEntry | undefined {
  const newline = message.indexOf(10)
  if (newline < 0) return undefined
  const header = message.toString('utf8', 0, newline)
  const first = header.indexOf(' ')
  const second = header.indexOf(' ', first + 1)
  const third = header.indexOf(' ', second + 1)
  if (first < 0 || second < 0 || third < 0) return undefined
  return entryOf(stream, header.slice(0, first), Number(header.slice(first + 1, second)), Number(header.slice(second + 1, third)), header.slice(third + 1), message.subarray(newline + 1))
}

/** Builds an entry from its stored parts; `info` is the JSON `[binary, origin, exclude]`. */
export function entryOf (stream: string, epoch: string, seq: number, ts: number, info: string, payload: Buffer): StreamEntry {
  const [binary, origin, exclude] = JSON.parse(info) as [number, string, string[] | null]
  const entry: { -readonly [K in keyof StreamEntry]: StreamEntry[K] } = { stream, epoch, seq, ts, origin, payload, binary: binary === 1 }
  if (exclude !== null) entry.exclude = exclude
  return entry
}

export class StreamSubscriptions {
  readonly #source: StreamSource
  readonly #streams = new Map<string, StreamState>()
  readonly #byChannel = new Map<string, StreamState>()
  /** What `deliver` returned for this instance's own entries, until their publish takes it. */
  readonly #results = new Map<string, { value: unknown, at: number }>()
  readonly #waiters = new Map<string, (value: unknown) => void>()
  /** Entries that were never delivered here: trimmed from the log before a gap could be filled. */
  skipped = 0

  constructor (source: StreamSource) {
    this.#source = source
  }

  has (stream: string): boolean {
    return this.#streams.has(stream)
  }

  /** Counted; the first subscribe of a stream subscribes its channel. */
  subscribe (stream: string): void {
    const state = this.#streams.get(stream)
    if (state !== undefined) {
      state.count++
      return
    }
    const created = new StreamState(stream, this.#source.channelOf(stream))
    this.#streams.set(stream, created)
    this.#byChannel.set(created.channel, created)
    if (this.#source.subscriberReady()) void this.#activate(created)
  }

  unsubscribe (stream: string): void {
    const state = this.#streams.get(stream)
    if (state === undefined) return
    if (--state.count > 0) return
    this.#forget(state)
    if (this.#source.subscriberReady()) void this.#source.unsubscribe([state.channel]).catch(() => {})
  }

  /**
   * Resolves once the stream's subscription is live and what was published since the subscribe
   * call is delivered (immediately when it is, or when it is not followed).
   */
  async whenActive (stream: string): Promise<void> {
    const state = this.#streams.get(stream)
    if (state === undefined || state.live) return
    await state.active.promise
  }

  /**
   * Where delivery of a followed stream stands here, once it is active and the last entry's
   * delivery finished (a fan-out to many local readers spans turns): every later entry comes
   * through `deliver`. Undefined when the stream is not followed. The store's top can be ahead
   * of it by the notifications still on their way, which a follower must not take as sent.
   */
  async position (stream: string): Promise<StreamPosition | undefined> {
    await this.whenActive(stream)
    const state = this.#streams.get(stream)
    if (state === undefined || !state.live || state.epoch === undefined) return undefined
    const position = { epoch: state.epoch, seq: state.last }
    await state.delivering?.then(noop, noop)
    return position
  }

  /** A notification on `channel`; false when the channel is not a stream's. */
  receive (channel: string, message: Buffer): boolean {
    const state = this.#byChannel.get(channel)
    if (state === undefined) return false
    const entry = decodeNotification(state.stream, message)
    if (entry !== undefined) this.#accept(state, entry)
    return true
  }

  /**
   * This instance published `entry` to a followed stream: resolves with what `deliver`
   * returned for it, once it was delivered in its place in the stream.
   */
  async delivered (entry: StreamEntry): Promise<unknown> {
    const k = key(entry.epoch, entry.seq)
    const kept = this.#results.get(k)
    if (kept !== undefined) {
      this.#results.delete(k)
      return kept.value
    }
    const state = this.#streams.get(entry.stream)
    if (state === undefined || (state.epoch === entry.epoch && state.last >= entry.seq)) return undefined
    state.own.set(k, entry)
    if (state.epoch === entry.epoch) state.highest = Math.max(state.highest, entry.seq)
    const result = new Promise<unknown>((resolve) => { this.#waiters.set(k, resolve) })
    this.#armGap(state)
    return await result
  }

  /** The subscriber (re)connected: subscribes every followed stream again and reads what it missed meanwhile. */
  async resubscribe (): Promise<void> {
    const states = [...this.#streams.values()]
    for (let i = 0; i < states.length; i += 500) {
      const batch = states.slice(i, i + 500).filter((state) => !state.closed)
      if (batch.length === 0) continue
      for (const state of batch) state.activating = true
      try {
        await this.#source.subscribe(batch.map((state) => state.channel))
      } finally {
        for (const state of batch) state.activating = false
      }
    }
    await Promise.all(states.map(async (state) => {
      if (state.closed) return
      if (state.started) await this.#fill(state, true, lookbackAfterReconnect)
      else await this.#start(state)
    }))
  }

  /**
   * Reads every followed stream's position and delivers what a silent subscription missed.
   * With `lookback` (after a failover) it also reads that many entries already delivered, to
   * find positions the stream re-issued after it went back.
   */
  async check (lookback = 0): Promise<void> {
    await Promise.all([...this.#streams.values()].map(async (state) => {
      if (state.started && !state.filling) await this.#fill(state, true, lookback)
    }))
  }

  /** Forgets `deliver` results that no publish came for (its call to Redis timed out). */
  sweep (now = Date.now()): void {
    for (const [k, kept] of this.#results) if (now - kept.at > keptResultsMs) this.#results.delete(k)
  }

  close (): void {
    for (const state of this.#streams.values()) this.#forget(state)
    this.#results.clear()
  }

  channels (): string[] {
    return [...this.#byChannel.keys()]
  }

  #forget (state: StreamState): void {
    state.closed = true
    clearTimeout(state.gapTimer)
    state.gapTimer = undefined
    this.#streams.delete(state.stream)
    if (this.#byChannel.get(state.channel) === state) this.#byChannel.delete(state.channel)
    for (const k of state.own.keys()) this.#settle(k, undefined)
    state.own.clear()
    state.active.resolve()
  }

  async #activate (state: StreamState): Promise<void> {
    state.activating = true
    try {
      await this.#source.subscribe([state.channel])
    } catch {
      return // the subscriber's next 'ready' subscribes it
    } finally {
      state.activating = false
    }
    await this.#start(state)
  }

  /**
   * The subscription is live: every entry after the stream's current top will arrive, and the
   * entries published between the subscribe call and now are read from the log before the
   * stream counts as active (a follower reading the top then finds them delivered).
   */
  async #start (state: StreamState): Promise<void> {
    if (state.closed || state.started) return
    let start: StreamStart
    try {
      start = await this.#source.start(state.stream, state.since)
    } catch {
      return // the subscriber's next 'ready' or the next check starts it
    }
    if (state.closed || state.started) return
    const { top, before } = start
    state.epoch = top.epoch
    state.last = Math.min(before, top.seq)
    state.highest = top.seq
    const early = state.early
    state.early = []
    for (const entry of early) this.#accept(state, entry)
    if (state.highest > state.last) await this.#fill(state, false)
    if (state.closed) return
    // An own entry at or before the starting position whose notification did not arrive was
    // published before this subscription began (it raced with the start): no delivery will
    // come for it, so its publish resolves without a local result instead of waiting forever.
    for (const [k, entry] of state.own) {
      if (entry.epoch !== state.epoch || entry.seq > state.last) continue
      state.own.delete(k)
      this.#settle(k, undefined)
    }
    if (this.#gap(state)) this.#armGap(state)
    state.live = true
    state.active.resolve()
  }

  #accept (state: StreamState, entry: StreamEntry): void {
    if (state.closed) return
    if (!state.started) {
      state.early.push(entry)
      return
    }
    if (entry.epoch !== state.epoch) this.#newEpoch(state, entry.epoch)
    if (entry.seq <= state.last) {
      // A seq delivered before, but written after it: the stream went back (a failover to a
      // replica that lagged) and re-issues its positions. Follow it from there.
      if (entry.ts > state.lastTs) this.#rewind(state, entry.seq - 1)
      else return
    }
    state.highest = Math.max(state.highest, entry.seq)
    if (entry.seq === state.last + 1) {
      this.#emit(state, entry)
      this.#drain(state)
    } else {
      state.pending.set(entry.seq, entry)
      this.#armGap(state)
    }
  }

  /** The stream's history was lost (a new epoch): follow the new epoch from its start. */
  #newEpoch (state: StreamState, epoch: string): void {
    state.epoch = epoch
    state.last = 0
    state.highest = 0
    state.lastTs = 0
    state.pending.clear()
    for (const [k, entry] of state.own) {
      if (entry.epoch === epoch) state.highest = Math.max(state.highest, entry.seq)
      else {
        state.own.delete(k)
        this.#settle(k, undefined)
      }
    }
  }

  #rewind (state: StreamState, seq: number): void {
    state.last = seq
    state.highest = seq
    state.pending.clear()
  }

  #emit (state: StreamState, entry: StreamEntry): void {
    state.last = entry.seq
    state.lastTs = Math.max(state.lastTs, entry.ts)
    state.pending.delete(entry.seq)
    const k = key(entry.epoch, entry.seq)
    state.own.delete(k)
    let value: unknown
    try {
      value = this.#source.deliver(entry)
    } catch (err) {
      process.emitWarning(err as Error) // the stabilizer's handler must not break delivery of the stream
    }
    // A client's stream is one write; a fan-out to a group or everyone may span turns.
    if (value instanceof Promise && !entry.stream.startsWith(clientStreamPrefix)) state.delivering = value
    if (entry.origin !== this.#source.instanceId) return
    if (!this.#settle(k, value)) this.#results.set(k, { value, at: Date.now() })
  }

  #settle (k: string, value: unknown): boolean {
    const waiter = this.#waiters.get(k)
    if (waiter === undefined) return false
    this.#waiters.delete(k)
    waiter(value)
    return true
  }

  #drain (state: StreamState): void {
    while (!state.closed && state.epoch !== undefined) {
      const next = state.pending.get(state.last + 1) ?? state.own.get(key(state.epoch, state.last + 1))
      if (next === undefined || next.seq !== state.last + 1) break
      this.#emit(state, next)
    }
    if (this.#gap(state)) this.#armGap(state)
    else {
      clearTimeout(state.gapTimer)
      state.gapTimer = undefined
    }
  }

  #gap (state: StreamState): boolean {
    return state.highest > state.last || state.own.size > 0
  }

  #armGap (state: StreamState): void {
    if (state.closed || state.gapTimer !== undefined || state.filling || !state.started) return
    state.gapTimer = setTimeout(() => {
      state.gapTimer = undefined
      void this.#fill(state, false)
    }, this.#source.gapTimeout)
    state.gapTimer.unref()
  }

  /** Delivers from the log what is missing up to what is known to exist (and, with `toTop`, up to the stream's top). */
  async #fill (state: StreamState, toTop: boolean, lookback = 0): Promise<void> {
    if (state.closed || state.epoch === undefined) return
    if (state.filling) {
      // Asked again while reading (a reconnect during a gap's fill): read again once done.
      if (toTop) state.refillLookback = Math.max(lookback, state.refillLookback ?? 0)
      return
    }
    state.filling = true
    try {
      let first = true
      while (!state.closed && (first || this.#gap(state))) {
        const before = `${state.epoch}:${state.last}`
        const from = first ? Math.max(0, state.last - lookback) : state.last
        const read = await this.#source.read(state.stream, { epoch: state.epoch, seq: from }, fillPage)
        if (state.closed) return
        if (read.top.epoch !== state.epoch) this.#newEpoch(state, read.top.epoch)
        // The stream is behind what was delivered here (a failover to a replica that lagged):
        // what comes next re-issues positions from its top.
        else if (read.top.seq < state.last && read.missed === -1) this.#rewind(state, read.top.seq)
        if (first && toTop) state.highest = Math.max(state.highest, read.top.seq)
        first = false
        for (const entry of read.entries) {
          if (entry.seq > state.last + 1) this.#skipTo(state, entry.seq - 1)
          this.#accept(state, entry)
        }
        if (read.entries.length === 0) {
          // Nothing after `last` is kept: what is missing up to the next entry held here is gone.
          const next = Math.min(...state.pending.keys(), ...this.#ownSeqs(state))
          this.#skipTo(state, Number.isFinite(next) ? next - 1 : Math.max(state.highest, read.top.seq))
        }
        this.#drain(state)
        if (`${state.epoch}:${state.last}` === before) {
          // No progress: what is left are own entries of an epoch the log no longer has.
          for (const [k, entry] of state.own) {
            if (entry.epoch === state.epoch) continue
            state.own.delete(k)
            this.#settle(k, undefined)
          }
          break
        }
      }
    } catch {
      // The log cannot be read now: deliver what is here rather than hold it.
      this.#skipTo(state, state.highest)
      this.#drain(state)
    } finally {
      state.filling = false
      const refillLookback = state.refillLookback
      state.refillLookback = undefined
      if (refillLookback !== undefined && !state.closed) void this.#fill(state, true, refillLookback)
      else if (!state.closed && this.#gap(state)) this.#armGap(state)
    }
  }

  #ownSeqs (state: StreamState): number[] {
    const seqs: number[] = []
    for (const entry of state.own.values()) if (entry.epoch === state.epoch) seqs.push(entry.seq)
    return seqs
  }

  /** Moves past seqs up to `seq` that cannot be had, delivering those held here. */
  #skipTo (state: StreamState, seq: number): void {
    while (state.last < seq && state.epoch !== undefined) {
      const next = state.last + 1
      const held = state.pending.get(next) ?? state.own.get(key(state.epoch, next))
      if (held !== undefined) this.#emit(state, held)
      else {
        state.last = next
        this.skipped++
      }
    }
  }
}
