/**
 * What waits for a `stabilizer.v1` connection while the positions of some of its streams are
 * read (or its welcome has not gone out), so that it gets every message once, in order, after.
 */
import type { StreamPosition } from './adapter/adapter.js'

/** A message with the place it has in its stream (none when unpublished). */
export interface Positioned {
  readonly position: { readonly stream: string, readonly epoch: string, readonly seq: number } | undefined
}

/** Messages held for one connection while the positions of its streams are read, at most. */
const maxHeld = 10_000

/**
 * A `stabilizer.v1` connection whose position in some streams is not known yet (or whose
 * welcome has not gone out): what reaches it meanwhile is held, in order, and sent once the
 * position is known — without a duplicate or a gap.
 */
export class CatchUp<T extends Positioned = Positioned> {
  private readonly pending: Set<string>
  /** The streams the welcome gives positions for, in order (joins before the welcome add to it). */
  readonly streams: string[]
  private held: T[] = []
  /**
   * Per stream, the position the client already has (from its welcome or a replay). The
   * shared store is read directly, so it can be ahead of this instance's live delivery: an
   * entry up to it that arrives afterwards was already sent, and is dropped.
   */
  private readonly floors = new Map<string, StreamPosition>()
  /** Held messages dropped past `maxHeld`. */
  overflowed = 0

  constructor (streams: Iterable<string>, private welcomePending: boolean, private readonly onOverflow: () => void) {
    this.pending = new Set(streams)
    this.streams = [...this.pending]
  }

  /** Whether the welcome has yet to go out (nothing may precede it). */
  get waitingForWelcome (): boolean {
    return this.welcomePending
  }

  /** Takes a message for the connection if it must wait (or was already sent); false when it may be sent now. */
  holds (message: T): boolean {
    const stream = message.position?.stream
    if (stream !== undefined && this.floors.size > 0 && this.belowFloor(message.position!)) return true
    if (!this.welcomePending && (stream === undefined || !this.pending.has(stream))) return false
    if (this.held.length >= maxHeld) {
      this.held.shift()
      this.overflowed++
      this.onOverflow()
    }
    this.held.push(message)
    return true
  }

  add (stream: string): void {
    if (this.pending.has(stream)) return
    this.pending.add(stream)
    if (this.welcomePending) this.streams.push(stream)
  }

  /** The connection left the stream before its position was known: what was held of it goes. */
  remove (stream: string): void {
    this.pending.delete(stream)
    this.floors.delete(stream)
    const at = this.streams.indexOf(stream)
    if (at >= 0) this.streams.splice(at, 1)
    this.held = this.held.filter((message) => message.position?.stream !== stream)
  }

  /** The first held message of `stream` (to start its position before it). */
  firstHeld (stream: string): T | undefined {
    return this.held.find((message) => message.position?.stream === stream)
  }

  /**
   * The stream's position is known (`covered`: the client has everything up to it): takes its
   * held messages that come after it, in order; those of other pending streams stay held.
   */
  settle (stream: string, covered: StreamPosition | undefined): T[] {
    this.pending.delete(stream)
    if (this.welcomePending) return []
    if (covered !== undefined) this.floors.set(stream, covered)
    return this.take((message) => message.position?.stream === stream, covered)
  }

  /** The welcome went out: everything held that is not waiting for a pending stream. */
  welcomed (covered: ReadonlyMap<string, StreamPosition>): T[] {
    this.welcomePending = false
    for (const [stream, position] of covered) this.floors.set(stream, position)
    return this.take((message) => message.position === undefined || !this.pending.has(message.position.stream), covered)
  }

  get done (): boolean {
    return !this.welcomePending && this.pending.size === 0 && this.floors.size === 0
  }

  /** Whether a live entry was already sent; the first one past a stream's floor removes it (delivery is in stream order). */
  private belowFloor (at: NonNullable<Positioned['position']>): boolean {
    const floor = this.floors.get(at.stream)
    if (floor === undefined) return false
    if (floor.epoch === at.epoch && at.seq <= floor.seq) return true
    this.floors.delete(at.stream)
    return false
  }

  private take (selected: (message: T) => boolean, covered: StreamPosition | ReadonlyMap<string, StreamPosition> | undefined): T[] {
    const out: T[] = []
    const kept: T[] = []
    for (const message of this.held) {
      if (!selected(message)) {
        kept.push(message)
        continue
      }
      const at = message.position
      const upTo = at === undefined ? undefined : covered instanceof Map ? covered.get(at.stream) : covered as StreamPosition | undefined
      if (at === undefined || upTo === undefined || at.epoch !== upTo.epoch || at.seq > upTo.seq) {
        out.push(message)
        if (at !== undefined) this.floors.delete(at.stream) // delivery has passed the floor
      }
    }
    this.held = kept
    return out
  }
}
