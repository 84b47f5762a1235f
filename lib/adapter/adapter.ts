/**
 * The scale-out seam: everything another instance must see crosses this interface as
 * serializable data (never a socket or a Connection); `memory.ts` and `redis.ts` implement it.
 */

// Streams. Every message that may have to be replayed or delivered elsewhere is published to
// exactly one stream: `*` (everyone), `g:<group>` (a group's members) or `c:<clientId>` (one
// client). A stream is an ordered, bounded log: each entry gets a position (the stream's epoch
// and a sequence number that grows by one per entry). The epoch changes when the stream's
// history is lost (a Redis restarted empty, a process restarted, a stream forgotten): a
// position of another epoch can never be continued. Work per publish is one append and one
// notification per stream, whatever the number of recipients.

/** The stream every connection follows. */
export const allStream = '*'
/** The stream of one group. */
export function groupStream (group: string): string {
  return `g:${group}`
}
/** The stream of one client's direct messages. */
export function clientStream (clientId: string): string {
  return `c:${clientId}`
}

/** Where a reader stands in a stream: it has every entry up to `seq` of `epoch`. */
export interface StreamPosition {
  readonly epoch: string
  /** 0 before the first entry of the epoch. */
  readonly seq: number
}

/** A message as it is published: the protocol payload (text as a JSON string literal, or raw bytes). */
export interface StreamMessage {
  readonly payload: Buffer
  readonly binary: boolean
  /** Client ids that must not receive it (a broadcast's `exclude`). */
  readonly exclude?: readonly string[]
}

/** A published message with its place in its stream. */
export interface StreamEntry extends StreamMessage {
  readonly stream: string
  readonly epoch: string
  readonly seq: number
  /** The instance that published it. */
  readonly origin: string
  /** When it was published (ms since the epoch, the shared store's clock): orders a replay across streams. */
  readonly ts: number
}

/** What `read()` found after a position. */
export interface StreamRead {
  /** The stream's current position (epoch and last sequence number). */
  readonly top: StreamPosition
  /** The entries after the position asked for, in order, at most `limit`. */
  readonly entries: readonly StreamEntry[]
  /**
   * Entries between the position asked for and the first entry returned that are gone
   * (trimmed from the bounded log); -1 when the position's epoch is not the stream's
   * (its history was lost: how much is unknown).
   */
  readonly missed: number
}

/** What is kept of a session so that any instance can resume it. */
export interface SessionRecord {
  readonly clientId: string
  readonly sessionId: string
  /** Whether the session speaks `stabilizer.v1` (only those get replay). */
  readonly protocol: boolean
  /** User data: key → JSON text of the value. */
  readonly userData: ReadonlyArray<readonly [string, string]>
  readonly groups: readonly string[]
}

/** The cluster as the adapter sees it (for `GET /ws-stats`). */
export interface ClusterView {
  /** Instances alive (this one included). */
  readonly instances: number
  /** Connections held by them. */
  readonly connections: number
}

/** What the adapter calls back on its instance; given to `start()`. */
export interface AdapterHandlers {
  /**
   * An entry of a stream this instance subscribed to, published by any instance (this one
   * too: local publishes come back through here, so every instance sees one order per
   * stream). Called in stream order, each entry once. The return value of the call for an
   * entry this instance published is what its `publish()` resolves with as `local`.
   */
  deliver: (entry: StreamEntry) => unknown
  /**
   * Another instance claimed `clientId` for a connection opened at `since`: close the local
   * connection with 4500 if it opened no later than that (a newer local one stays).
   */
  replaced: (clientId: string, since: number) => void
  /** `disconnect(clientId)` was called on another instance for a client held here. */
  disconnect: (clientId: string, code: number, reason: string) => void
  /** The adapter lost (false) or regained (true) its shared store: what was published meanwhile may be missing. */
  connectivity?: (connected: boolean) => void
}

export interface PublishResult {
  readonly position: StreamPosition
  /** What `handlers.deliver` returned for this entry on this instance (undefined if not subscribed). */
  readonly local: unknown
}

/** Bounds of every stream's log, and how long what is shared outlives its writer. */
export interface AdapterLimits {
  /** Entries kept per stream (0: nothing is kept, publishes are only delivered). */
  readonly maxEntries: number
  /** Payload bytes kept per stream. */
  readonly maxBytes: number
  /** How long an entry and a retained session outlive their last write, in ms (`resumeWindow`). */
  readonly retentionMs: number
  /** Retained sessions kept at once by a single-process adapter; past it the oldest goes. */
  readonly maxSessions: number
}

/** This instance, as `start()` introduces it to the adapter. */
export interface InstanceContext {
  /** Unique per process start. */
  readonly instanceId: string
  readonly limits: AdapterLimits
  readonly handlers: AdapterHandlers
  /** Open connections here (read when the adapter announces the instance). */
  readonly connectionCount: () => number
}

export interface StabilizerAdapter {
  /**
   * Whether instances share what crosses this adapter. When false (one process), sessions
   * are only written when their connection ends; when true they are written through, so that
   * a session survives its instance being killed.
   */
  readonly shared: boolean

  /** Joins the cluster. Rejects when the shared store cannot be reached (the message says how). */
  start: (instance: InstanceContext) => Promise<void>
  /** Leaves the cluster: presence of this instance's clients dropped, subscriptions closed, no timer left. Idempotent. */
  stop: () => Promise<void>

  // ---- streams ------------------------------------------------------------------------------
  /**
   * Appends `message` to `stream` and delivers it to every subscribed instance (this one
   * through `handlers.deliver` before the promise resolves, when subscribed). Rejects within
   * a bounded time when the shared store is unreachable; nothing is then delivered anywhere.
   */
  publish: (stream: string, message: StreamMessage) => Promise<PublishResult>
  /**
   * This instance has local readers of `stream`: deliver its entries, every one published after
   * this call, also before the subscription took effect in a shared store. Counted: one
   * unsubscribe undoes one subscribe.
   */
  subscribe: (stream: string) => void
  unsubscribe: (stream: string) => void
  /**
   * The stream's current position (a stream never published to: a fresh epoch, seq 0). On an
   * instance that subscribes to the stream: the position up to which its entries were delivered
   * here, so that every later entry comes through `deliver` (a follower starts from it).
   */
  top: (stream: string) => Promise<StreamPosition>
  /** Entries after `after` (at most `limit`), or from the oldest kept when `after` is undefined. */
  read: (stream: string, after: StreamPosition | undefined, limit: number) => Promise<StreamRead>

  // ---- presence -----------------------------------------------------------------------------
  /**
   * This instance holds `clientId`, for a connection opened at `since` (ms since the epoch,
   * default now): any other instance holding it is told `replaced`. Claims are ordered by
   * `since`, not by arrival: resolves false, and changes nothing, when the id is already held
   * for a connection opened later (the caller's connection is the older one and must go).
   */
  claim: (clientId: string, since?: number) => Promise<boolean>
  /** This instance no longer holds `clientId` (a no-op if another instance claimed it since). */
  release: (clientId: string) => Promise<void>
  /** Whether `clientId` is connected somewhere or has a retained session. */
  locate: (clientId: string) => Promise<'connected' | 'retained' | undefined>
  /** Asks the instance holding `clientId` to close it. Resolves false when no instance holds it. */
  disconnect: (clientId: string, code: number, reason: string) => Promise<boolean>
  /** The cluster's size, as last seen (undefined for a single-process adapter). */
  cluster: () => ClusterView | undefined

  // ---- sessions -----------------------------------------------------------------------------
  /**
   * Writes (or overwrites) the session of `record.clientId`. While this instance holds the
   * client (between `claim` and `release`) the record is kept alive; afterwards, or once this
   * instance died, it expires `limits.retentionMs` after the last write or refresh.
   */
  saveSession: (record: SessionRecord) => Promise<void>
  /** Takes (reads and deletes, atomically) the session of `clientId` if it is `sessionId`. */
  takeSession: (clientId: string, sessionId: string) => Promise<SessionRecord | undefined>
  /** Deletes the session of `clientId` if it is `sessionId`. */
  dropSession: (clientId: string, sessionId: string) => Promise<void>

  /** Retained sessions and their user-data bytes, as far as this adapter counts them (for stats). */
  retained?: () => { sessions: number, bytes: number }

  // ---- tokens -------------------------------------------------------------------------------
  /** Records that a reconnect token was used; false if it already was. Forgettable after `expiresAt`. */
  redeemToken: (tokenId: string, expiresAt: number) => Promise<boolean>
}
