import type { Connection } from './connection.js'

/** What the scheduler needs from the rest of the stabilizer. */
export interface HeartbeatHost {
  /** Sends one ping (protocol frame or application message); false if the socket refused it. */
  sendPing: (connection: Connection) => boolean
  /** Ends a connection that did not answer in time. */
  terminate: (connection: Connection) => void
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
 * Milliseconds one turn of the scheduler may spend sending pings. Pings due beyond it wait in
 * a queue for the next turn (`setImmediate`), so neither a burst of due pings (after the loop
 * was busy, e.g. accepting a reconnect storm) nor the burst of pongs that answers it holds the
 * loop for long: a ping write costs ~10–40 µs on 2 cores, so a turn sends a few dozen.
 */
export const pingBudgetMs = 1

/**
 * Pings go out in batches, this many per interval (see `insertPing`). A batch costs a fixed
 * amount beyond its pings (the loop's wake-ups while the last pongs trickle back, code and data
 * gone cold since the batch before), so fewer, larger batches cost less per ping/pong: at 10k
 * connections and the default interval, 4 or 5 batches per interval took 9–10 % off the CPU of
 * 10 in the same runs (bench/README.md). A batch is still sent in turns of `pingBudgetMs`, so
 * its size never shows as a stall.
 */
const pingBatchesPerInterval = 4

const enum Phase { Idle = 0, PingDue = 1, AwaitingPong = 2, Judging = 3 }

/**
 * Per-connection heartbeat state, kept on the connection object itself: an intrusive list
 * node (no allocation per schedule), the phase, and the RTT figures.
 */
export class HeartbeatState {
  /** Neighbours in the wheel's list or in the queue of pings to send. */
  next: Connection | null = null
  prev: Connection | null = null
  /**
   * The wheel's list holding the connection, -1 when in none. A queued connection keeps the
   * index of the ping list it came from (a due list joins the queue whole, untouched).
   */
  slot = -1
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
 * One scheduler for all connections: a timing wheel of `slots` slots, each with a list of
 * deadlines and a list of pings, advanced by one timer that is set for the next tick whose slot
 * holds a connection (not every tick: empty ticks are walked over when it fires, in one pass).
 *
 * Each connection sits in exactly one list: its next event (a ping, or the check of an
 * unanswered ping). A tick costs in proportion to the connections due, never a sweep of
 * everyone; first pings are jittered over the ticks of [interval/2, interval] so a mass
 * reconnect does not synchronise them. Deadlines are kept to the tick; later pings are grouped
 * into batches, four per interval, so that they go out in runs of turns rather than a few at
 * every tick.
 *
 * A tick has two passes. The first walks the deadline lists that came due (a connection still
 * there is unanswered, a suspect) and appends their ping lists to a FIFO queue whole, in one
 * step each, without touching the connections in them. The second sends queued pings for at
 * most `pingBudgetMs` and leaves the rest for the next turn. Deadlines are therefore judged on
 * time however many pings are waiting, the pings are sent in small bursts, and a tick's length
 * does not grow with the size of a batch: each connection is touched once, when its ping is
 * sent (at 18k connections the 99th percentile of ticks went from 2.2 to 1.15 ms, one run).
 *
 * No false kills: a tick only marks connections whose deadline passed as suspects. The
 * verdict is given two `setImmediate` hops later, after the poll phase has read whatever was
 * waiting in the socket buffers — so a peer whose pong sat unread while the event loop was
 * blocked is found alive (a "reprieve"), however long the block.
 */
export class HeartbeatScheduler {
  readonly counters: HeartbeatCounters = { pingsSent: 0, pongsReceived: 0, timeouts: 0, reprieves: 0, longestTickMs: 0 }
  readonly tickMs: number
  /** Pings go out on the ticks that are multiples of this (see `insertPing`). */
  readonly pingBatchTicks: number
  private readonly interval: number
  private readonly timeout: number
  private readonly host: HeartbeatHost
  /**
   * The wheel's lists: `slots` lists of deadlines, `slots` lists of pings (at `slots` + the
   * tick's slot), then the queue of pings due (at `queue`).
   */
  private readonly wheel: Array<Connection | null>
  /** The last connection of each ping list: a due list is appended to the queue in one step. */
  private readonly pingTails: Array<Connection | null>
  private readonly slots: number
  private readonly queue: number
  private queueTail: Connection | null = null
  private readonly epoch = performance.now()
  private processedTick: number
  private timer: NodeJS.Timeout | undefined = undefined
  /**
   * The tick the timer is set for: +Infinity when no timer is set, -Infinity while a tick is
   * under way or its continuation is pending (the turn that empties the queue sets the timer).
   * No connection is due before it: the ticks before it hold nothing to do.
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
    // ping would be due just after the batch that ends the interval and leave a batch early.
    this.pingBatchTicks = Math.max(1, Math.floor(this.interval / pingBatchesPerInterval / this.tickMs))
    // The wheel must span the longest delay it is ever asked to hold, plus catch-up room.
    const longest = Math.max(this.interval, this.timeout)
    this.slots = Math.ceil(longest / this.tickMs) + 3
    this.queue = 2 * this.slots
    this.wheel = new Array<Connection | null>(this.queue + 1).fill(null)
    this.pingTails = new Array<Connection | null>(this.slots).fill(null)
    this.processedTick = this.currentTick()
  }

  /** Connections currently scheduled. */
  get scheduled (): number {
    return this.size
  }

  /**
   * Schedules a new connection's first ping at a random tick of [interval/2, interval], each as
   * likely. Its later pings join the batches (`insertPing`).
   */
  add (connection: Connection): void {
    if (this.stopped) return
    const state = connection.heartbeat
    state.phase = Phase.PingDue
    const now = performance.now()
    // While the timer waits for a later tick, the ticks before it hold nothing due: count them
    // as processed up to now, so the new slot is reckoned from a current tick (and the wheel,
    // one interval long, never wraps around on it).
    if (Number.isFinite(this.timerTick)) this.processedTick = Math.max(this.processedTick, Math.min(Math.floor(this.toTicks(now)), this.timerTick - 1))
    const first = Math.ceil(this.toTicks(now + this.interval / 2))
    const last = Math.max(first, Math.floor(this.toTicks(now + this.interval)))
    this.insertAt(connection, first + Math.floor(Math.random() * (last - first + 1)), this.slots)
  }

  /** Forgets a connection (it closed). */
  remove (connection: Connection): void {
    const state = connection.heartbeat
    if (state.slot !== -1) this.unlink(connection)
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
    state.smoothedRttMs = Number.isNaN(state.smoothedRttMs) ? rtt : state.smoothedRttMs + rttAlpha * (rtt - state.smoothedRttMs)
  }

  /** Stops every timer; nothing is scheduled afterwards. */
  stop (): void {
    this.stopped = true
    this.stopTimer()
    for (let slot = 0; slot < this.wheel.length; slot++) {
      let connection = this.wheel[slot]
      while (connection !== null) {
        const next = connection.heartbeat.next
        connection.heartbeat.next = null
        connection.heartbeat.prev = null
        connection.heartbeat.slot = -1
        connection = next
      }
      this.wheel[slot] = null
    }
    this.pingTails.fill(null)
    this.queueTail = null
    this.size = 0
  }

  /**
   * Advances the wheel to now (catching up after a stall): makes every unanswered deadline due a
   * suspect and queues the pings due, then sends queued pings for at most `pingBudgetMs`.
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
      const slot = tick % this.slots
      // Deadlines still there are unanswered (an answer moves the connection to its next ping).
      let connection = this.wheel[slot]
      while (connection !== null) {
        const state = connection.heartbeat
        const next = state.next
        if (state.dueTick <= tick) {
          this.unlink(connection)
          state.phase = Phase.Judging
          ;(suspects ??= []).push(connection)
        }
        connection = next
      }
      // The pings due join the queue as one list, without touching any of them here: each is
      // touched once, when it is sent.
      const pings = this.wheel[this.slots + slot]
      if (pings !== null) {
        pings.heartbeat.prev = this.queueTail
        if (this.queueTail === null) this.wheel[this.queue] = pings
        else this.queueTail.heartbeat.next = pings
        this.queueTail = this.pingTails[slot]
        this.wheel[this.slots + slot] = null
        this.pingTails[slot] = null
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
    for (let connection = this.wheel[this.queue]; connection !== null; connection = this.wheel[this.queue]) {
      if (now - started >= pingBudgetMs) {
        if (!this.stopped) this.continuation ??= setImmediate(() => this.tick())
        break
      }
      this.unlink(connection)
      // Never sent early: a ping list only ever holds pings due within one turn of the wheel
      // (the wheel spans the interval), but a ping found early goes back to its list.
      if (connection.heartbeat.dueTick > this.processedTick) this.insertAt(connection, connection.heartbeat.dueTick, this.slots)
      else this.ping(connection, now)
      now = performance.now()
    }
    if (this.continuation === undefined) this.setTimerForNextDue()
    // Both passes: walking the deadlines of a long catch-up counts too.
    const took = performance.now() - started
    if (took > this.counters.longestTickMs) this.counters.longestTickMs = took
  }

  /** Sends a due ping and schedules the connection's next event: the deadline, or the next ping. */
  private ping (connection: Connection, now: number): void {
    if (!this.host.sendPing(connection)) return // closing: its close removes it
    const state = connection.heartbeat
    this.counters.pingsSent++
    state.pingSentAt = now
    state.awaitingPong = true
    if (this.timeout > 0) {
      state.phase = Phase.AwaitingPong
      this.insertDeadline(connection, now + this.timeout)
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

  /** Puts a connection whose deadline is `at` in the slot of the first tick at or after it (never early). */
  private insertDeadline (connection: Connection, at: number): void {
    this.insertAt(connection, Math.ceil(this.toTicks(at)), 0)
  }

  /**
   * Puts a connection whose next ping is due at `at` in the slot of the last ping batch at or
   * before it (or the next tick, if that batch has passed). Pings due within a batch go out
   * together, in turns of at most `pingBudgetMs`: fewer, larger bursts let the loop read the
   * pongs of one turn between the next turns instead of waking for every few of them, which
   * cut the CPU per ping/pong by a third at the default interval (bench/README.md). A ping is
   * never late for batching, at most one batch early: the ping after a connection's first one
   * (sent at a jittered tick) moves it onto the batches' ticks, and from there on, when the
   * interval is a whole number of batches, its pings are exactly one interval apart.
   */
  private insertPing (connection: Connection, at: number): void {
    const batch = this.pingBatchTicks
    const tick = batch > 1 ? Math.floor(this.toTicks(at) / batch) * batch : Math.ceil(this.toTicks(at))
    this.insertAt(connection, tick, this.slots)
  }

  /** The wheel's tick count at a `performance.now()` time (fractional). */
  private toTicks (time: number): number {
    return (time - this.epoch) / this.tickMs
  }

  /**
   * Puts a connection in the list of `dueTick` (deadlines: `lists` 0, pings: `slots`), or of the
   * next tick if that one was processed, and brings the timer forward if it is due before the
   * tick the timer is set for.
   */
  private insertAt (connection: Connection, dueTick: number, lists: number): void {
    if (this.stopped) return
    // Nothing scheduled and no timer: the wheel was idle, its ticks start from now.
    if (this.size === 0 && this.timerTick === Number.POSITIVE_INFINITY) this.processedTick = this.currentTick()
    // Never in a tick already processed: a due time that has passed goes to the next tick.
    dueTick = Math.max(this.processedTick + 1, dueTick)
    const state = connection.heartbeat
    const slot = lists + dueTick % this.slots
    state.dueTick = dueTick
    state.slot = slot
    state.prev = null
    state.next = this.wheel[slot]
    if (state.next !== null) state.next.heartbeat.prev = connection
    else if (lists !== 0) this.pingTails[slot - lists] = connection
    this.wheel[slot] = connection
    this.size++
    if (dueTick < this.timerTick) this.setTimer(dueTick)
  }

  /**
   * Sets the timer for the first tick whose slot holds a connection, or none when nothing is
   * scheduled: the loop wakes only when something may be due, never for an empty tick (an idle
   * server with a few connections wakes about once per ping, not 20 times a second).
   */
  private setTimerForNextDue (): void {
    if (!this.stopped && this.size > 0) {
      for (let tick = this.processedTick + 1, end = tick + this.slots; tick < end; tick++) {
        if (!this.isEmpty(tick % this.slots)) {
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

  /** Whether a tick's slot holds neither deadlines nor pings. */
  private isEmpty (slot: number): boolean {
    return this.wheel[slot] === null && this.wheel[this.slots + slot] === null
  }

  private unlink (connection: Connection): void {
    const state = connection.heartbeat
    const slot = state.slot
    if (this.queueTail === connection) this.queueTail = state.prev
    // The head of its list: the queue's (whatever list it came from), or its own list's.
    if (state.prev !== null) state.prev.heartbeat.next = state.next
    else if (this.wheel[this.queue] === connection) this.wheel[this.queue] = state.next
    else this.wheel[slot] = state.next
    if (state.next !== null) state.next.heartbeat.prev = state.prev
    else if (slot >= this.slots && this.pingTails[slot - this.slots] === connection) this.pingTails[slot - this.slots] = state.prev
    state.next = null
    state.prev = null
    state.slot = -1
    this.size--
    // The timer waits for the slot just emptied (the last pong of a batch took out its
    // deadline): set it for the next slot that holds something instead of waking for nothing.
    if (state.dueTick === this.timerTick && this.isEmpty(slot % this.slots)) this.setTimerForNextDue()
  }

  private stopTimer (): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    this.timerTick = Number.POSITIVE_INFINITY
    if (this.continuation !== undefined) clearImmediate(this.continuation)
    this.continuation = undefined
  }
}
