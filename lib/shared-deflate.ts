// The shared compressor: a broadcast deflated once per message and per negotiated window size,
// framed once, and the same bytes written to every compressing recipient (RFC 7692).
import { constants, deflateRawSync, type ZlibOptions } from 'node:zlib'
import { wholeFrame } from './frame.js'

/** What the shared compressor needs to know; the negotiated window comes from each socket. */
export interface SharedDeflateSettings {
  /** Messages shorter than this many bytes are sent uncompressed (ws's `threshold`). Default 1024. */
  threshold?: number
  /** zlib compression level, 0–9, or -1 for zlib's default (6). Default -1. */
  level?: number
  /** zlib memory level, 1–9. Default 8. */
  memLevel?: number
}

/** The least `server_max_window_bits` the shared compressor serves: zlib cannot make raw deflate streams with an 8-bit window. */
export const leastSharedWindowBits = 9

/**
 * One compressor per plugin instance. It keeps no zlib stream: with server_no_context_takeover
 * every message is deflated on its own, so each deflate is independent of the last and one
 * output can go to every socket whose negotiated window is at least as large as the one it
 * was made with.
 *
 * The deflate is synchronous: it runs once per broadcast, in the same turn as the send loop,
 * and costs less than writing the same message to a turn's worth of sockets. An asynchronous
 * deflate would let sends issued after the broadcast overtake it.
 */
export class SharedDeflate {
  readonly threshold: number
  private readonly zlibOptions: ZlibOptions[]

  constructor (settings: SharedDeflateSettings = {}) {
    this.threshold = settings.threshold ?? 1024
    const base = { level: settings.level ?? constants.Z_DEFAULT_COMPRESSION, memLevel: settings.memLevel ?? constants.Z_DEFAULT_MEMLEVEL, finishFlush: constants.Z_SYNC_FLUSH }
    // Indexed by window bits, built once: a deflate per message must not allocate its options.
    this.zlibOptions = []
    for (let bits = leastSharedWindowBits; bits <= 15; bits++) this.zlibOptions[bits] = { ...base, windowBits: bits }
  }

  /**
   * The message as one whole compressed frame (RSV1 set): deflated with a window of
   * `windowBits` (9–15), flushed with Z_SYNC_FLUSH and its final 4 bytes (0x00 0x00 0xff 0xff)
   * removed, as RFC 7692 §7.2.1 says.
   */
  frame (payload: Buffer, binary: boolean, windowBits: number): Buffer {
    const deflated = deflateRawSync(payload, this.zlibOptions[windowBits])
    const frame = wholeFrame(deflated.subarray(0, deflated.length - 4), binary)
    frame[0] |= 0x40 // RSV1: the "Per-Message Compressed" bit, on the first (here the only) frame
    return frame
  }
}

/**
 * One message's compressed frames, made on first need by the first compressing recipient of
 * each window size (almost always one: clients rarely ask for a smaller window than 15).
 */
export class DeflatedFrames {
  private bits: number[] = []
  private frames: Buffer[] = []

  constructor (private readonly payload: Buffer, private readonly binary: boolean) {}

  /** The compressed frame for sockets of `windowBits` served by `deflate`. */
  frameFor (deflate: SharedDeflate, windowBits: number): Buffer {
    for (let i = 0; i < this.bits.length; i++) if (this.bits[i] === windowBits) return this.frames[i]
    const frame = deflate.frame(this.payload, this.binary, windowBits)
    this.bits.push(windowBits)
    this.frames.push(frame)
    return frame
  }
}
