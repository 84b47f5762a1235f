/** Liveness: the heartbeat timing wheel that pings every connection, measures RTT and terminates dead peers. */
/** What the scheduler needs of a connection: its heartbeat state, kept on the connection itself. */
export interface Beating {
  readonly heartbeat: HeartbeatState
  /** Only an open connection is judged. */
  readonly state: string
}
type Connection = Beating

/** What the scheduler needs from the rest of the stabilizer. */
export interface HeartbeatHost {
  /** Sends one ping (protocol frame or application message); false if the socket refused it. */
  sendPing: (connection: Connection) => boolean
  /** Ends a connection that did not answer in time. */
  terminate: (connection: Connection) => void
  /** A ping was answered after `rttMs` (metrics). */
  measured?: (rttMs: number) => void
}

export interface HeartbeatSettings {
  /** Milliseconds between pings; > 0 (0 disables the scheduler altogether: do not build one). */
  interval: number
  /**
   * Milliseconds a ping may stay unanswered; 0 = keepalive only, never terminate. It may
   * exceed the interval: no new ping is sent while one is unanswered.
   */
  timeout: number
}

export interface HeartbeatCounters {
  pingsSent: number
  pongsReceived: number
  /** Connections terminated for not answering. */
  timeouts: number
  /** Connections suspected at their deadline whose answer was found in pending I/O. */
  reprieves: number
  /** Longest time one tick of the scheduler held the event loop, in ms, since start. */
  longestTickMs: number
}

/** Smoothing factor of the RTT average (as TCP's SRTT: 1/8). */
const rttAlpha = 0.125

/**
 * Milliseconds one turn of the scheduler may spend sending pings. Pings due beyond it wait for
 * the next turn (`setImmediate`), in the queue or in their batch, so neither a burst of due
 * pings (after the loop was busy, e.g. accepting a reconnect storm) nor the burst of pongs that
 * answers it holds the loop for long: a ping write costs ~10–40 µs on 2 cores, so a turn sends
 * a few dozen.
 */
export const pingBudgetMs = 1

/**
 * Pings go out in batches, this many per interval. A batch costs a fixed amount beyond its
 * pings (the loop's wake-ups while the last pongs trickle back, code and data gone cold since
 * the batch before), so fewer, larger batches cost less per ping/pong: at 10k connections and
 * the default interval, 4 or 5 batches per interval took 9–10 % off the CPU of 10 in the same
 * runs (bench/README.md). A batch is still sent in turns of `pingBudgetMs`, so its size never
 * shows as a stall.
 */
const pingBatchesPerInterval = 4

/**
 * Connections whose member indices are this many in a row share a batch. A batch is sent in
 * index order, and indices are handed out in the order connections arrive, the order their
 * objects were allocated in: a batch walks runs of neighbours in memory, as one sweep over
 * every client does, where a batch in the order its pongs had arrived missed the caches at
 * every socket. At 10k connections and a 1 s interval this took the CPU per ping/pong from
 * 24.7–32.0 µs to 22.8–23.4 µs (4 interleaved runs; the ws sweep 20.3–25.3, bench/README.md).
 * Freed indices are handed out again first, so under churn the order is only partly kept.
 */
const batchRunLength = 256

const enum Phase { Idle = 0, PingDue = 1, AwaitingPong = 2, Judging = 3 }

/** `HeartbeatState.slot` of a connection whose ping waits in the queue of pings due. */
const inQueue = -2
/** `HeartbeatState.slot` of a connection whose ping is in a batch set (the set of its `dueTick`). */
const inBatch = -3

/**
 * Per-connection heartbeat state, kept on the connection object itself: an intrusive list
 * node (no allocation per schedule), its place in the scheduler, the phase, and the RTT figures.
 */
export class HeartbeatState {
  /** Neighbours in the wheel's list or in the queue of pings due. */
  next: Connection | null = null
  prev: Connection | null = null
  /** The wheel's list holding the connection, `inQueue`, `inBatch`, or -1 when in none. */
  slot = -1
  /** The connection's index in the scheduler's member table, -1 when not scheduled. */
  index = -1
  dueTick = 0
  phase: Phase = Phase.Idle
  awaitingPong = false
  // Times and RTTs start as NaN, a double, not undefined: V8 then gives these fields a double
  // representation and a pong overwrites them in place, where a field that started as
  // undefined would get a newly allocated number on every pong.
  pingSentAt = Number.NaN
  rttMs = Number.NaN
  smoothedRttMs = Number.NaN

  /** The last ping→pong round trip in ms; undefined before the first. */
  get lastRtt (): number | undefined {
    return Number.isNaN(this.rttMs) ? undefined : this.rttMs
  }

  /** The smoothed round trip (1/8 weight to each new sample) in ms; undefined before the first. */
  get smoothedRtt (): number | undefined {
    return Number.isNaN(this.smoothedRttMs) ? undefined : this.smoothedRttMs
  }
}

/**
 * One scheduler for all connections: a timing wheel of `slots` lists of events (deadlines, and
 * pings that are not on a batch) and a small ring of batch sets (the pings of one batch tick,
 * as bits of a bitset over member indices), advanced by one timer that is set for the next tick
 * that holds something (not every tick: empty ticks are walked over when it fires, in one pass).
 *
 * Each connection is in exactly one place: its next event (a ping, or the check of an
 * unanswered ping). A tick costs in proportion to the connections due, never a sweep of
 * everyone (a due batch's bitset is scanned a 32-bit word at a time: 1 563 words at 50k
 * members). First pings are jittered over the ticks of [interval/2, interval] so a mass
 * reconnect does not synchronise them; from the second on, a connection's pings go out with its
 * batch: one of four per interval, chosen by its member index (`batchRunLength` in a row share
 * one), so a batch is a quarter of the connections, in runs of neighbours. Deadlines are kept
 * to the tick.
 *
 * A tick has two passes. The first walks the wheel's lists that came due (a connection with a
 * deadline there is unanswered, a suspect; one with a ping joins the queue of pings due) and
 * marks the batch sets that came due for sending. The second sends pings for at most
 * `pingBudgetMs`, the queue first, then the due batch sets in index order, and leaves the rest
 * for the next turn. Deadlines are therefore judged on time however many pings are waiting,
 * the pings are sent in small bursts, and a tick's length does not grow with the size of a
 * batch: a batch's connections are touched once, when their ping is sent.
 *
 * No false kills: a tick only marks connections whose deadline passed as suspects. The
 * verdict is given two `setImmediate` hops later, after the poll phase has read whatever was
 * waiting in the socket buffers — so a peer whose pong sat unread while the event loop was
 * blocked is found alive (a "reprieve"), however long the block.
 */
export class HeartbeatScheduler {
  readonly counters: HeartbeatCounters = { pingsSent: 0, pongsReceived: 0, timeouts: 0, reprieves: 0, longestTickMs: 0 }
  /**
   * Milliseconds one turn may spend sending pings. Not an option: `bench/heartbeat-instructions.ts`
   * raises it for a server running under an instruction counter (25–60× slower), so that a turn
   * sends as many pings there as natively.
   */
  pingBudgetMs = pingBudgetMs
  readonly tickMs: number
  /** Ticks between batches: a batch's pings go out on a tick that is a multiple of this. */
  readonly pingBatchTicks: number
  /** Batches per cycle: a connection's batch comes round every `batches` × `pingBatchTicks` ticks. */
  readonly batches: number
  private readonly interval: number
  private readonly timeout: number
  private readonly host: HeartbeatHost
  /** The wheel's lists of events, one per tick of a turn of the wheel. */
  private readonly wheel: Array<Connection | null>
  private readonly slots: number
  private queueHead: Connection | null = null
  private queueTail: Connection | null = null
  /** Scheduled connections by member index; freed indices are handed out again first. */
  private readonly members: Array<Connection | undefined> = []
  private readonly freeIndices: number[] = []
  /** Batch sets in a ring: the set of batch tick T is (T / pingBatchTicks) % `batchSets`. */
  private readonly batchSets: number
  /** The sets' bits, `words` 32-bit words per set, one bit per member index. */
  private bits: Uint32Array
  private words = 0
  private readonly batchCounts: Int32Array
  /** Batch sets whose tick came, in the order they came, from `drainHead` on; and each one's word cursor. */
  private readonly draining: number[] = []
  private drainHead = 0
  private readonly drainCursor: Int32Array
  private readonly isDraining: Uint8Array
  private readonly epoch = performance.now()
  private processedTick: number
  private timer: NodeJS.Timeout | undefined = undefined
  /**
   * The tick the timer is set for: +Infinity when no timer is set, -Infinity while a tick is
   * under way or its continuation is pending (the turn that sends the last due ping sets the
   * timer). No connection is due before it: the ticks before it hold nothing to do.
   */
  private timerTick = Number.POSITIVE_INFINITY
  private readonly onTimer = (): void => { this.tick() }
  private size = 0
  private stopped = false
  private continuation: NodeJS.Immediate | undefined = undefined

  constructor (settings: HeartbeatSettings, host: HeartbeatHost) {
    this.interval = settings.interval
    this.timeout = settings.timeout
    this.host = host
    const shortest = this.timeout > 0 ? Math.min(this.interval, this.timeout) : this.interval
    this.tickMs = Math.max(5, Math.min(50, Math.floor(shortest / 20)))
    // Rounded down: the batches of one interval never add up to more than the interval, or each
    // ping would be due just after its batch and wait a whole cycle.
    this.pingBatchTicks = Math.max(1, Math.floor(this.interval / pingBatchesPerInterval / this.tickMs))
    this.batches = Math.max(1, Math.floor(this.interval / this.tickMs / this.pingBatchTicks))
    // The wheel must span the longest delay it is ever asked to hold, plus catch-up room.
    const longest = Math.max(this.interval, this.timeout)
    this.slots = Math.ceil(longest / this.tickMs) + 3
    this.wheel = new Array<Connection | null>(this.slots).fill(null)
    // Pings are scheduled at most an interval ahead: twice the wheel's span in sets means a set
    // is not given a later tick's pings while its own are still being sent, unless sending one
    // batch took longer than an interval (and then a ping found early is left for its tick).
    this.batchSets = Math.ceil(2 * this.slots / this.pingBatchTicks) + 1
    this.bits = new Uint32Array(0)
    this.batchCounts = new Int32Array(this.batchSets)
    this.drainCursor = new Int32Array(this.batchSets)
    this.isDraining = new Uint8Array(this.batchSets)
    this.processedTick = this.currentTick()
  }

  /** Connections currently scheduled. */
  get scheduled (): number {
    return this.size
  }

  /**
   * Schedules a new connection's first ping at a random tick of [interval/2, interval], each as
   * likely. Its later pings go out with its batch (`insertPing`).
   */
  add (connection: Connection): void {
    if (this.stopped) return
    const state = connection.heartbeat
    state.index = this.freeIndices.pop() ?? this.members.length
    this.members[state.index] = connection
    if (state.index >= this.words * 32) this.growBits()
    state.phase = Phase.PingDue
    const now = performance.now()
    // While the timer waits for a later tick, the ticks before it hold nothing due: count them
    // as processed up to now, so the new slot is reckoned from a current tick (and the wheel,
    // one interval long, never wraps around on it).
    if (Number.isFinite(this.timerTick)) this.processedTick = Math.max(this.processedTick, Math.min(Math.floor(this.toTicks(now)), this.timerTick - 1))
    const first = Math.ceil(this.toTicks(now + this.interval / 2))
    const last = Math.max(first, Math.floor(this.toTicks(now + this.interval)))
    this.insertAt(connection, first + Math.floor(Math.random() * (last - first + 1)))
  }

  /** Forgets a connection (it closed). */
  remove (connection: Connection): void {
    const state = connection.heartbeat
    if (state.slot === inBatch) this.leaveBatch(connection)
    else if (state.slot !== -1) this.unlink(connection)
    if (state.index !== -1 && this.members[state.index] === connection) {
      this.members[state.index] = undefined
      this.freeIndices.push(state.index)
    }
    state.index = -1
    state.phase = Phase.Idle
    if (this.size === 0) this.stopTimer()
  }

  /** Records proof of life. With `rtt`, it was the answer to our ping and is measured. */
  alive (connection: Connection, measureRtt: boolean): void {
    const state = connection.heartbeat
    if (!state.awaitingPong) return
    state.awaitingPong = false
    if (state.phase === Phase.AwaitingPong && state.slot !== -1) {
      // Answered: the next event is the next ping, one interval after this one (a suspect
      // being judged keeps its place: the verdict will reprieve it).
      this.unlink(connection)
      state.phase = Phase.PingDue
      this.insertPing(connection, state.pingSentAt + this.interval)
    }
    if (!measureRtt) return
    this.counters.pongsReceived++
    const rtt = performance.now() - state.pingSentAt
    state.rttMs = rtt
    this.host.measured?.(rtt)
    state.smoothedRttMs = Number.isNaN(state.smoothedRttMs) ? rtt : state.smoothedRttMs + rttAlpha * (rtt - state.smoothedRttMs)
  }

  /** Stops every timer; nothing is scheduled afterwards. */
  stop (): void {
    this.stopped = true
    this.stopTimer()
    for (const connection of this.members) {
      if (connection === undefined) continue
      const state = connection.heartbeat
      state.next = null
      state.prev = null
      state.slot = -1
      state.index = -1
    }
    this.members.length = 0
    this.freeIndices.length = 0
    this.wheel.fill(null)
    this.queueHead = null
    this.queueTail = null
    this.bits = new Uint32Array(0)
    this.words = 0
    this.batchCounts.fill(0)
    this.draining.length = 0
    this.drainHead = 0
    this.isDraining.fill(0)
    this.size = 0
  }

  /**
   * Advances the wheel to now (catching up after a stall): makes every unanswered deadline due a
   * suspect, queues the pings due and marks the batches due, then sends pings for at most
   * `pingBudgetMs`.
   */
  tick (): void {
    const started = performance.now()
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    this.continuation = undefined
    this.timerTick = Number.NEGATIVE_INFINITY
    const target = this.currentTick()
    let suspects: Connection[] | undefined
    while (this.processedTick < target) {
      const tick = this.processedTick + 1
      // A connection with a deadline here is unanswered (an answer moves it to its next ping);
      // one with a ping joins the queue.
      let connection = this.wheel[tick % this.slots]
      while (connection !== null) {
        const state = connection.heartbeat
        const next = state.next
        if (state.dueTick <= tick) {
          this.unlink(connection)
          if (state.phase === Phase.AwaitingPong) {
            state.phase = Phase.Judging
            ;(suspects ??= []).push(connection)
          } else {
            this.enqueue(connection)
          }
        }
        connection = next
      }
      if (tick % this.pingBatchTicks === 0) {
        const set = this.batchSet(tick)
        if (this.batchCounts[set] > 0) this.startDraining(set)
      }
      this.processedTick = tick
    }
    if (suspects !== undefined) {
      const judged = suspects
      // Two hops: the first check phase follows this iteration's poll phase, the second one
      // follows one more — any pong that was waiting in a socket buffer has been read by then.
      setImmediate(() => setImmediate(() => this.judge(judged)))
    }
    let now = started
    for (let connection = this.nextDue(); connection !== null; connection = this.nextDue()) {
      this.ping(connection, now)
      now = performance.now()
      if (now - started >= this.pingBudgetMs) {
        if (!this.stopped && (this.queueHead !== null || this.drainHead < this.draining.length)) this.continuation = setImmediate(() => this.tick())
        break
      }
    }
    if (this.continuation === undefined) this.setTimerForNextDue()
    // Both passes: walking the deadlines of a long catch-up counts too.
    const took = performance.now() - started
    if (took > this.counters.longestTickMs) this.counters.longestTickMs = took
  }

  /** Sends a due ping and schedules the connection's next event: the deadline, or the next ping. */
  private ping (connection: Connection, now: number): void {
    const state = connection.heartbeat
    // Closing: its close removes it. Removed while the ping was written (a host that closed it
    // then and there): nothing is scheduled for it again.
    if (!this.host.sendPing(connection) || state.index === -1) return
    this.counters.pingsSent++
    state.pingSentAt = now
    state.awaitingPong = true
    if (this.timeout > 0) {
      state.phase = Phase.AwaitingPong
      this.insertAt(connection, Math.ceil(this.toTicks(now + this.timeout)))
    } else {
      this.insertPing(connection, now + this.interval)
    }
  }

  private judge (suspects: readonly Connection[]): void {
    // Stopped (shutdown) between the tick and the verdict: the drain decides their fate now.
    if (this.stopped) return
    for (const connection of suspects) {
      const state = connection.heartbeat
      if (state.phase !== Phase.Judging || connection.state !== 'open') continue
      if (state.awaitingPong) {
        this.counters.timeouts++
        state.phase = Phase.Idle
        this.host.terminate(connection)
      } else {
        this.counters.reprieves++
        state.phase = Phase.PingDue
        this.insertPing(connection, Math.max(performance.now(), state.pingSentAt + this.interval))
      }
    }
  }

  private currentTick (): number {
    return Math.floor(this.toTicks(performance.now()))
  }

  /** The wheel's tick count at a `performance.now()` time (fractional). */
  private toTicks (time: number): number {
    return (time - this.epoch) / this.tickMs
  }

  /**
   * Schedules a connection's ping due at `at` with the last tick of its batch at or before it:
   * never late, and from the second ping on (the first is jittered) exactly one cycle of
   * batches apart — the interval, or up to 3 ticks less when the interval is not a whole number
   * of batches. Where that tick has passed (a late answer, a reprieve), the ping goes out at the
   * next tick instead, and the one after it is back on the batch. (A tick whose moment has come
   * but which the wheel has not processed yet still counts: its batch goes out at once.)
   */
  private insertPing (connection: Connection, at: number): void {
    if (this.stopped) return
    const state = connection.heartbeat
    const cycle = this.batches * this.pingBatchTicks
    const own = (Math.floor(state.index / batchRunLength) % this.batches) * this.pingBatchTicks
    const tick = Math.floor((this.toTicks(at) - own) / cycle) * cycle + own
    if (tick > this.processedTick) this.joinBatch(connection, tick)
    else this.insertAt(connection, tick)
  }

  /** Puts a connection's ping in the batch set of `tick` (a batch tick after the last processed one). */
  private joinBatch (connection: Connection, tick: number): void {
    const state = connection.heartbeat
    const set = this.batchSet(tick)
    this.bits[set * this.words + (state.index >>> 5)] |= 1 << (state.index & 31)
    this.batchCounts[set]++
    state.slot = inBatch
    state.dueTick = tick
    this.size++
    if (tick < this.timerTick) this.setTimer(tick)
  }

  private leaveBatch (connection: Connection): void {
    const state = connection.heartbeat
    const set = this.batchSet(state.dueTick)
    this.bits[set * this.words + (state.index >>> 5)] &= ~(1 << (state.index & 31))
    this.batchCounts[set]--
    state.slot = -1
    this.size--
    // The timer waits for the batch just emptied: set it for the next tick that holds something.
    if (state.dueTick === this.timerTick && this.isEmpty(state.dueTick)) this.setTimerForNextDue()
  }

  /** The batch set of a batch tick (a multiple of `pingBatchTicks`). */
  private batchSet (tick: number): number {
    return (tick / this.pingBatchTicks) % this.batchSets
  }

  /** Makes room in every batch set for one more run of member indices (the sets' length doubles). */
  private growBits (): void {
    const words = Math.max(2 * this.words, batchRunLength / 32)
    const bits = new Uint32Array(this.batchSets * words)
    for (let set = 0; set < this.batchSets; set++) bits.set(this.bits.subarray(set * this.words, (set + 1) * this.words), set * words)
    this.bits = bits
    this.words = words
  }

  /** A batch set's tick came: its pings are sent from its first index on, after those already due. */
  private startDraining (set: number): void {
    this.drainCursor[set] = 0
    if (this.isDraining[set] === 1) return
    this.isDraining[set] = 1
    this.draining.push(set)
  }

  /**
   * The next connection whose ping is due, out of its queue or batch set: the queue first (first
   * pings, pings off their batch), then the due batch sets, each in index order.
   */
  private nextDue (): Connection | null {
    const queued = this.queueHead
    if (queued !== null) {
      this.unlink(queued)
      return queued
    }
    while (this.drainHead < this.draining.length) {
      const set = this.draining[this.drainHead]
      const base = set * this.words
      for (let word = this.drainCursor[set]; word < this.words; word++) {
        let bits = this.bits[base + word]
        while (bits !== 0) {
          const bit = 31 - Math.clz32(bits & -bits)
          bits &= bits - 1
          const connection = this.members[word * 32 + bit]!
          // A later tick's ping in the same set (sending this batch took over an interval): left for its tick.
          if (connection.heartbeat.dueTick > this.processedTick) continue
          this.drainCursor[set] = word
          this.leaveBatch(connection)
          return connection
        }
      }
      this.isDraining[set] = 0
      if (++this.drainHead === this.draining.length) {
        this.draining.length = 0
        this.drainHead = 0
      }
    }
    return null
  }

  /** Appends a connection (in no list) to the queue of pings due. */
  private enqueue (connection: Connection): void {
    const state = connection.heartbeat
    state.slot = inQueue
    state.prev = this.queueTail
    state.next = null
    if (this.queueTail === null) this.queueHead = connection
    else this.queueTail.heartbeat.next = connection
    this.queueTail = connection
    this.size++
  }

  /**
   * Puts a connection in the wheel's list of `dueTick` (its deadline, or a ping off its batch),
   * or of the next tick if that one was processed, and brings the timer forward if it is due
   * before the tick the timer is set for.
   */
  private insertAt (connection: Connection, dueTick: number): void {
    if (this.stopped) return
    // Nothing scheduled and no timer: the wheel was idle, its ticks start from now.
    if (this.size === 0 && this.timerTick === Number.POSITIVE_INFINITY) this.processedTick = this.currentTick()
    // Never in a tick already processed: a due time that has passed goes to the next tick.
    dueTick = Math.max(this.processedTick + 1, dueTick)
    const state = connection.heartbeat
    const slot = dueTick % this.slots
    state.dueTick = dueTick
    state.slot = slot
    state.prev = null
    state.next = this.wheel[slot]
    if (state.next !== null) state.next.heartbeat.prev = connection
    this.wheel[slot] = connection
    this.size++
    if (dueTick < this.timerTick) this.setTimer(dueTick)
  }

  /**
   * Sets the timer for the first tick that holds a connection, or none when nothing is
   * scheduled: the loop wakes only when something may be due, never for an empty tick (an idle
   * server with a few connections wakes about once per ping, not 20 times a second).
   */
  private setTimerForNextDue (): void {
    if (!this.stopped && this.size > 0) {
      for (let tick = this.processedTick + 1, end = tick + this.slots; tick < end; tick++) {
        if (!this.isEmpty(tick)) {
          this.setTimer(tick)
          return
        }
      }
    }
    this.stopTimer()
  }

  private setTimer (tick: number): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timerTick = tick
    this.timer = setTimeout(this.onTimer, Math.max(0, Math.ceil(this.epoch + tick * this.tickMs - performance.now())))
    this.timer.unref()
  }

  /** Whether a tick holds no event and no batch. */
  private isEmpty (tick: number): boolean {
    return this.wheel[tick % this.slots] === null && (tick % this.pingBatchTicks !== 0 || this.batchCounts[this.batchSet(tick)] === 0)
  }

  /** Takes a connection out of the wheel's list or the queue it is in. */
  private unlink (connection: Connection): void {
    const state = connection.heartbeat
    const slot = state.slot
    if (state.prev !== null) state.prev.heartbeat.next = state.next
    else if (slot === inQueue) this.queueHead = state.next
    else this.wheel[slot] = state.next
    if (state.next !== null) state.next.heartbeat.prev = state.prev
    else if (slot === inQueue) this.queueTail = state.prev
    state.next = null
    state.prev = null
    state.slot = -1
    this.size--
    // The timer waits for the list just emptied (the last pong of a batch took out its
    // deadline): set it for the next tick that holds something instead of waking for nothing.
    if (state.dueTick === this.timerTick && slot !== inQueue && this.isEmpty(state.dueTick)) this.setTimerForNextDue()
  }

  private stopTimer (): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    this.timerTick = Number.POSITIVE_INFINITY
    if (this.continuation !== undefined) clearImmediate(this.continuation)
    this.continuation = undefined
  }
}
