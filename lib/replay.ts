/**
 * The outbound log of one protocol session (`stabilizer.v1`): it numbers every message the
 * session is sent and keeps the most recent ones, bounded by count and bytes, so that a
 * client that comes back can be sent exactly what it missed.
 */

/** One logged message: its sequence number and its payload as framed for the protocol. */
export interface LoggedMessage {
  readonly seq: number
  /** Text: the payload as a JSON string literal; binary: the raw bytes. Shared between sessions for a broadcast. */
  readonly payload: Buffer
  readonly binary: boolean
}

/** What a resume could give back: `full` (everything missed), `partial` (a gap), `none` (no replay). */
export type ReplayOutcome = 'full' | 'partial' | 'none'

export interface ReplayPlan {
  readonly outcome: ReplayOutcome
  /** The sequence number the client continues from: the replay starts right after it. */
  readonly from: number
  /** Messages to send again, in order. */
  readonly messages: readonly LoggedMessage[]
  /** Messages the client missed and will never get (the gap of a partial replay). */
  readonly missed: number
}

/** Bytes counted per logged message on top of its payload: the entry, its array slot and the payload's Buffer object (measured by bench/replay.ts: 164 for a message of its own, 58 for a shared broadcast payload). */
export const entryOverheadBytes = 160

export class ReplayLog {
  /** The last sequence number assigned (0 before the first message). */
  lastSeq = 0
  /** Bytes held: payloads plus `entryOverheadBytes` per message. */
  bytes = 0
  private entries: LoggedMessage[] = []
  /** Index of the oldest live entry in `entries` (entries before it were trimmed). */
  private head = 0

  constructor (private readonly maxMessages: number, private readonly maxBytes: number) {}

  get size (): number {
    return this.entries.length - this.head
  }

  /** Numbers a message and keeps it, dropping the oldest past the bounds. Returns its sequence number. */
  append (payload: Buffer, binary: boolean): number {
    const seq = ++this.lastSeq
    if (this.maxMessages === 0) return seq
    this.entries.push({ seq, payload, binary })
    this.bytes += payload.length + entryOverheadBytes
    while (this.size > this.maxMessages || (this.bytes > this.maxBytes && this.size > 0)) this.dropOldest()
    this.compact()
    return seq
  }

  /** The client confirmed every message up to `seq`: they need not be kept. */
  acknowledge (seq: number): void {
    while (this.size > 0 && this.entries[this.head].seq <= seq) this.dropOldest()
    this.compact()
  }

  /**
   * What to send a client that last saw `clientSeq` (undefined: it did not say, so nothing is
   * replayed). A claim beyond the log's end is treated as up to date.
   */
  plan (clientSeq: number | undefined): ReplayPlan {
    if (clientSeq === undefined) return { outcome: 'none', from: this.lastSeq, messages: [], missed: 0 }
    const seen = Math.min(Math.max(0, clientSeq), this.lastSeq)
    const firstKept = this.size > 0 ? this.entries[this.head].seq : this.lastSeq + 1
    if (seen + 1 >= firstKept) {
      return { outcome: 'full', from: seen, messages: this.entries.slice(this.head + (seen + 1 - firstKept)), missed: 0 }
    }
    return { outcome: 'partial', from: firstKept - 1, messages: this.entries.slice(this.head), missed: firstKept - 1 - seen }
  }

  private dropOldest (): void {
    const oldest = this.entries[this.head]
    this.entries[this.head] = undefined as unknown as LoggedMessage
    this.head++
    this.bytes -= oldest.payload.length + entryOverheadBytes
  }

  /** Reclaims the trimmed front of the array once it is at least half of it. */
  private compact (): void {
    if (this.head > 32 && this.head * 2 >= this.entries.length) {
      this.entries = this.entries.slice(this.head)
      this.head = 0
    }
  }
}
