/**
 * One stream's bounded log in process memory: its epoch, its last sequence number and the most
 * recent entries, bounded by count, bytes and age. Used by the in-process adapter.
 */
import { randomBytes } from 'node:crypto'
import type { StreamEntry, StreamMessage, StreamPosition, StreamRead } from './adapter.js'

/** Bytes counted per entry on top of its payload: the entry object, its slot, the Buffer object. */
export const entryOverheadBytes = 160

/** A fresh epoch: 8 random base64url characters. */
export function newEpoch (): string {
  return randomBytes(6).toString('base64url')
}

export interface LogBounds {
  readonly maxEntries: number
  readonly maxBytes: number
  readonly retentionMs: number
}

export class StreamLog {
  readonly epoch = newEpoch()
  /** The last sequence number assigned (0 before the first entry). */
  seq = 0
  /** Bytes held: payloads plus `entryOverheadBytes` per entry. */
  bytes = 0
  /** Date.now() of the last publish or read: idle logs without readers are forgotten. */
  touchedAt = Date.now()
  private entries: StreamEntry[] = []
  /** Index of the oldest live entry (entries before it were trimmed). */
  private head = 0

  constructor (readonly stream: string, private readonly bounds: LogBounds) {}

  get size (): number {
    return this.entries.length - this.head
  }

  get top (): StreamPosition {
    return { epoch: this.epoch, seq: this.seq }
  }

  append (message: StreamMessage, origin: string, now: number): StreamEntry {
    const entry: StreamEntry = { stream: this.stream, epoch: this.epoch, seq: ++this.seq, origin, ts: now, payload: message.payload, binary: message.binary, exclude: message.exclude }
    this.touchedAt = now
    if (this.bounds.maxEntries === 0) return entry
    this.entries.push(entry)
    this.bytes += entry.payload.length + entryOverheadBytes
    while (this.size > this.bounds.maxEntries || (this.bytes > this.bounds.maxBytes && this.size > 0)) this.dropOldest()
    this.compact()
    return entry
  }

  /** Drops entries older than the retention. */
  expire (now: number): void {
    const oldest = now - this.bounds.retentionMs
    while (this.size > 0 && this.entries[this.head].ts <= oldest) this.dropOldest()
    this.compact()
  }

  read (after: StreamPosition | undefined, limit: number, now: number): StreamRead {
    this.expire(now)
    this.touchedAt = now
    const firstKept = this.size > 0 ? this.entries[this.head].seq : this.seq + 1
    if (after !== undefined && after.epoch !== this.epoch) {
      return { top: this.top, entries: this.slice(firstKept, limit), missed: -1 }
    }
    // A claim beyond the log's end is taken as up to date.
    const seen = after === undefined ? firstKept - 1 : Math.min(Math.max(0, after.seq), this.seq)
    const from = Math.max(seen + 1, firstKept)
    return { top: this.top, entries: this.slice(from, limit), missed: from - 1 - seen }
  }

  private slice (fromSeq: number, limit: number): StreamEntry[] {
    if (this.size === 0 || limit <= 0) return []
    const start = this.head + (fromSeq - this.entries[this.head].seq)
    return this.entries.slice(start, start + limit)
  }

  private dropOldest (): void {
    const oldest = this.entries[this.head]
    this.entries[this.head] = undefined as unknown as StreamEntry
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
