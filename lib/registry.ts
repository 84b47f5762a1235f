/** Local connections by client id and by group; the group index tells the adapter which group streams to read. */
import type { Connection } from './connection.js'

/** Called when a group gets its first local member and when it loses its last. */
export interface GroupEvents {
  opened: (group: string) => void
  closed: (group: string) => void
}

/**
 * Connections by client id and the group index.
 *
 * Every removal takes the connection object, never a bare id: a stale socket's cleanup can
 * only ever remove itself, so it can never remove or close the connection that replaced it.
 */
export class Registry {
  /** Open connections by client id: what sends, groups and counts see. */
  private readonly active = new Map<string, Connection>()
  /** Every connection whose socket has not closed yet (open or closing): what shutdown waits for. */
  readonly live = new Set<Connection>()
  private readonly groups = new Map<string, Set<Connection>>()

  constructor (private readonly events?: GroupEvents) {}

  get size (): number {
    return this.active.size
  }

  get groupCount (): number {
    return this.groups.size
  }

  get (clientId: string): Connection | undefined {
    return this.active.get(clientId)
  }

  has (clientId: string): boolean {
    return this.active.has(clientId)
  }

  ids (): IterableIterator<string> {
    return this.active.keys()
  }

  connections (): IterableIterator<Connection> {
    return this.active.values()
  }

  /**
   * Adds `connection` as the active one for its id.
   * @returns the connection it replaced, if any; the caller closes it.
   */
  add (connection: Connection): Connection | undefined {
    const previous = this.active.get(connection.id)
    this.active.set(connection.id, connection)
    this.live.add(connection)
    if (previous !== undefined) this.deactivate(previous)
    return previous
  }

  /**
   * Takes `connection` out of the active index and out of every group's members (it is
   * closing: no send reaches it any more). Its own list of groups stays until it has closed,
   * so that a retained or replacing session can take them over.
   */
  deactivate (connection: Connection): void {
    if (this.active.get(connection.id) === connection) this.active.delete(connection.id)
    for (const group of connection.groups) this.removeMember(group, connection)
  }

  /** Forgets `connection` entirely once its socket has closed. */
  remove (connection: Connection): void {
    this.deactivate(connection)
    this.live.delete(connection)
  }

  join (connection: Connection, group: string): boolean {
    if (!connection.addGroup(group)) return false
    let members = this.groups.get(group)
    if (members === undefined) {
      members = new Set()
      this.groups.set(group, members)
      this.events?.opened(group)
    }
    members.add(connection)
    return true
  }

  leave (connection: Connection, group: string): boolean {
    if (!connection.removeGroup(group)) return false
    this.removeMember(group, connection)
    return true
  }

  private removeMember (group: string, connection: Connection): void {
    const members = this.groups.get(group)
    if (members === undefined) return
    members.delete(connection)
    if (members.size > 0) return
    this.groups.delete(group)
    this.events?.closed(group)
  }

  members (group: string): ReadonlySet<Connection> | undefined {
    return this.groups.get(group)
  }
}
