/**
 * Which disconnects keep a session, the record any instance resumes it from, and how a
 * `stabilizer.v1` connection starts its streams at exact positions (welcome, replay, join).
 */
import type { FastifyBaseLogger } from 'fastify'
import type { SessionRecord, StabilizerAdapter, StreamEntry, StreamPosition } from './adapter/adapter.js'
import type { Connection, DisconnectCause } from './connection.js'
import { CatchUp, type Positioned } from './catch-up.js'
import { Outbound } from './fanout.js'
import type { Positions, ReplayOutcome, ResumeReport } from './protocol.js'
import { holdWrites } from './write-coalescing.js'

/** What an upgrade that presented a valid reconnect token resumes. */
export interface ResumeRequest {
  readonly sessionId: string
  /** Where the client stands in its streams (`stabilizer.v1` clients), if it said. */
  readonly positions: Positions | undefined
  /** The retained session, taken from the adapter during admission (undefined: it was gone). */
  readonly record: SessionRecord | undefined
}

/**
 * Disconnects after which a client may come back to its session: losses and server-side
 * protections it can recover from, and — with a shared adapter — a shutdown (another
 * instance takes the client). Not retained: an end on purpose (1000 from the client,
 * `disconnect()`), a replacement (the session moves to the replacing connection), a policy close.
 */
export function allowsResume (cause: DisconnectCause, code: number, sharedAdapter: boolean): boolean {
  switch (cause) {
    case 'connection_lost':
    case 'heartbeat_timeout':
    case 'slow_consumer':
    case 'message_too_big':
    case 'handler_error':
    case 'protocol_error':
      return true
    case 'shutdown':
      return sharedAdapter
    case 'client_closed':
      return code !== 1000
    default:
      return false
  }
}

/** A resume as the streams see it. */
export interface Resuming {
  readonly positions: Positions | undefined
  /** Whether the session's user data and groups came back. */
  readonly stateRestored: boolean
}

/** How a connection's streams begin: what the welcome says and what follows it. */
export interface StreamStart {
  readonly positions: Positions
  /** For a resume: what it gave back. */
  readonly report: ResumeReport | undefined
  /** Replayed messages first, in publish order, then what was held meanwhile. */
  readonly messages: Outbound[]
}

/** The sends that starting streams needs from the stabilizer. */
export interface StreamIo {
  welcome: (connection: Connection, start: StreamStart) => void
  follow: (connection: Connection, stream: string, position: StreamPosition) => void
  send: (connection: Connection, message: Outbound) => void
}

/**
 * Reads where a `stabilizer.v1` connection starts in each of its streams, through the
 * adapter: the streams' tops for a new session, the replay after the client's positions for
 * a resume. Live messages meanwhile are held on the connection (`CatchUp`), so that the
 * client gets every message once, in order, after the welcome.
 */
export class StreamStarter {
  constructor (
    private readonly adapter: StabilizerAdapter,
    /** Entries read per stream at most (the logs hold no more). */
    private readonly replayLimit: number,
    private readonly io: StreamIo,
    private readonly log: FastifyBaseLogger
  ) {}

  /** Starts the connection's streams; the welcome goes out once their positions are known. */
  start (connection: Connection, streams: readonly string[], resume: Resuming | undefined): void {
    const catchUp = new CatchUp<Outbound>(streams, true, () => { connection.droppedMessages++ })
    connection.catchUp = catchUp
    this.begin(connection, catchUp, resume).catch((err: unknown) => {
      this.log.error({ err, clientId: connection.id }, 'websocket streams could not start')
    })
  }

  /**
   * The connection joined a stream: before its welcome, the welcome gives the position;
   * after it, a `follow` frame does.
   */
  follow (connection: Connection, stream: string): void {
    const catchUp = (connection.catchUp as CatchUp<Outbound> | undefined) ?? new CatchUp<Outbound>([], false, () => { connection.droppedMessages++ })
    const beforeWelcome = catchUp.waitingForWelcome
    catchUp.add(stream)
    connection.catchUp = catchUp
    if (beforeWelcome) return
    this.adapter.top(stream).then((top) => {
      const position = before(top, catchUp.firstHeld(stream))
      if (connection.state === 'open') this.io.follow(connection, stream, position)
      this.flush(connection, catchUp.settle(stream, position))
    }, (err: unknown) => {
      this.log.warn({ err, clientId: connection.id, stream }, 'websocket stream position unknown')
      this.flush(connection, catchUp.settle(stream, undefined))
    }).finally(() => {
      if (catchUp.done && connection.catchUp === catchUp) connection.catchUp = undefined
    })
  }

  /** The connection left a stream: a pending position is forgotten; returns whether the client must be told (`unfollow`). */
  unfollow (connection: Connection, stream: string): boolean {
    const catchUp = connection.catchUp
    if (catchUp === undefined) return true
    const tell = !catchUp.waitingForWelcome
    catchUp.remove(stream)
    if (catchUp.done) connection.catchUp = undefined
    return tell
  }

  private async begin (connection: Connection, catchUp: CatchUp<Outbound>, resume: Resuming | undefined): Promise<void> {
    const streams = catchUp.streams
    const offered = resume?.positions
    const positions: Positions = {}
    const covered = new Map<string, StreamPosition>()
    const replays: Array<readonly StreamEntry[]> = []
    let missed = 0
    let historyLost = false
    // Indexed: a join while positions are read adds to the list.
    for (let i = 0; i < streams.length; i++) {
      const stream = streams[i]
      const at = offered?.[stream]
      try {
        if (at !== undefined) {
          const read = await this.adapter.read(stream, { epoch: at[0], seq: at[1] }, this.replayLimit)
          if (read.missed < 0) historyLost = true
          else missed += read.missed
          const first = read.entries[0]
          positions[stream] = [read.top.epoch, first === undefined ? read.top.seq : first.seq - 1]
          const last = read.entries.at(-1)
          covered.set(stream, last === undefined ? read.top : { epoch: last.epoch, seq: last.seq })
          replays.push(read.entries)
        } else {
          const position = before(await this.adapter.top(stream), catchUp.firstHeld(stream))
          positions[stream] = [position.epoch, position.seq]
          covered.set(stream, position)
        }
      } catch (err) {
        this.log.warn({ err, clientId: connection.id, stream }, 'websocket stream position unknown')
        if (at !== undefined) historyLost = true
      }
    }
    for (const stream of Object.keys(positions)) if (!streams.includes(stream)) delete positions[stream]
    for (const stream of streams) catchUp.settle(stream, covered.get(stream))
    // Broadcasts that excluded this client are skipped, as they were live.
    const replayed = inPublishOrder(replays).filter((entry) => entry.exclude === undefined || !entry.exclude.includes(connection.id))
    const report = resume === undefined
      ? undefined
      : { outcome: outcomeOf(offered, missed, historyLost), stateRestored: resume.stateRestored, replayed: replayed.length, missed, historyLost }
    const messages = byPublishTime(replayed.map((entry) => Outbound.fromEntry(entry)), catchUp.welcomed(covered))
    if (connection.catchUp === catchUp && catchUp.done) connection.catchUp = undefined
    if (connection.state !== 'open') return
    this.io.welcome(connection, { positions, report, messages })
  }

  private flush (connection: Connection, messages: readonly Outbound[]): void {
    if (connection.state !== 'open') return
    holdWrites(connection.socket)
    for (const message of messages) this.io.send(connection, message)
  }
}

/** The position just before the first held message of the same epoch, else `top`. */
function before (top: StreamPosition, firstHeld: Positioned | undefined): StreamPosition {
  const at = firstHeld?.position
  if (at === undefined || at.epoch !== top.epoch || at.seq > top.seq) return top
  return { epoch: top.epoch, seq: at.seq - 1 }
}

function outcomeOf (offered: Positions | undefined, missed: number, historyLost: boolean): ReplayOutcome {
  if (offered === undefined || Object.keys(offered).length === 0) return 'none'
  return missed === 0 && !historyLost ? 'full' : 'partial'
}

/** Merges per-stream replays by publish time, keeping each stream's own order. */
function inPublishOrder (replays: ReadonlyArray<readonly StreamEntry[]>): StreamEntry[] {
  if (replays.length === 1) return [...replays[0]]
  const heads = replays.map(() => 0)
  const merged: StreamEntry[] = []
  for (;;) {
    let pick = -1
    for (let i = 0; i < replays.length; i++) {
      const entry = replays[i][heads[i]]
      if (entry !== undefined && (pick < 0 || entry.ts < replays[pick][heads[pick]].ts)) pick = i
    }
    if (pick < 0) return merged
    merged.push(replays[pick][heads[pick]++])
  }
}

/**
 * The replay and what arrived live while the streams were read, each in its own order, merged
 * by publish time: a stream read early may have live entries older than a later read's last.
 * A held message without a publish time (never published) comes after the replay.
 */
function byPublishTime (replayed: readonly Outbound[], held: readonly Outbound[]): Outbound[] {
  if (replayed.length === 0 || held.length === 0) return [...replayed, ...held]
  const merged: Outbound[] = []
  let next = 0
  for (const message of held) {
    const ts = message.position?.ts ?? Infinity
    while (next < replayed.length && (replayed[next].position?.ts ?? -Infinity) <= ts) merged.push(replayed[next++])
    merged.push(message)
  }
  while (next < replayed.length) merged.push(replayed[next++])
  return merged
}

/** A connection's session as any instance can resume it. */
export function sessionRecord (connection: Connection, userData: Array<[string, string]>): SessionRecord {
  return { clientId: connection.id, sessionId: connection.sessionId, protocol: connection.protocol, userData, groups: [...connection.groups] }
}
