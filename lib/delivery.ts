/**
 * Delivery: messages published through the adapter, and the entries it hands back delivered
 * to this instance's connections, behind the slow-consumer check.
 */
import type { FastifyBaseLogger } from 'fastify'
import { allStream, type PublishResult, type StabilizerAdapter, type StreamEntry, type StreamMessage } from './adapter/adapter.js'
import { CloseCode } from './close-codes.js'
import type { Connection, DisconnectCause } from './connection.js'
import { fanOut, Outbound, writeTo, type OutboundGate } from './fanout.js'
import type { StabilizerMetrics } from './metrics.js'
import type { ResolvedOptions } from './options.js'
import type { Registry } from './registry.js'
import type { ProtectionStats } from './stats.js'
import { transportDestroyed } from './wire.js'
import { waitingBytes } from './write-coalescing.js'

type LocalCounts = Awaited<ReturnType<typeof fanOut>>

export interface DeliveryHost {
  readonly metrics: StabilizerMetrics | undefined
  closeConnection: (connection: Connection, code: number, reason: string, cause: DisconnectCause) => boolean
}

export class Delivery {
  /** The slow-consumer check every outbound message passes. */
  readonly gate: OutboundGate
  /** Messages this instance is publishing, by payload: their delivery reuses what was encoded. */
  private readonly publishing = new WeakMap<Buffer, Outbound>()

  constructor (
    private readonly adapter: StabilizerAdapter,
    private readonly registry: Registry,
    private readonly options: ResolvedOptions,
    protection: ProtectionStats,
    private readonly host: DeliveryHost,
    private readonly log: FastifyBaseLogger
  ) {
    this.gate = this.createGate(protection)
  }

  /** Publishes through the adapter; the local delivery of the entry reuses `outbound`. */
  async publish (stream: string, outbound: Outbound, exclude: readonly string[] | undefined): Promise<PublishResult> {
    const message: StreamMessage = exclude === undefined ? { payload: outbound.payload, binary: outbound.binary } : { payload: outbound.payload, binary: outbound.binary, exclude }
    this.publishing.set(outbound.payload, outbound)
    const startedAt = performance.now()
    try {
      const published = await this.adapter.publish(stream, message)
      this.host.metrics?.adapterPublished(startedAt, false)
      return published
    } catch (err) {
      this.host.metrics?.adapterPublished(startedAt, true)
      throw err
    } finally {
      this.publishing.delete(outbound.payload)
    }
  }

  /** An entry of a stream this instance reads, delivered to its local recipients (what `publish` resolves with as `local`). */
  deliverEntry (entry: StreamEntry): Promise<unknown> | undefined {
    let outbound = this.publishing.get(entry.payload)
    if (outbound === undefined || outbound.position !== undefined) outbound = Outbound.fromEntry(entry)
    else outbound.position = entry
    if (entry.stream.startsWith('c:')) {
      const connection = this.registry.get(entry.stream.slice(2))
      // Not connected here (closing, or gone): the entry waits in its stream for a resume.
      return connection === undefined ? undefined : this.writeDirect(connection, outbound)
    }
    return this.fanOutLocally(entry.stream, outbound, entry.exclude)
  }

  /** Every local recipient of a stream (`*` or a group). */
  async fanOutLocally (stream: string, outbound: Outbound, exclude: readonly string[] | undefined): Promise<LocalCounts> {
    const recipients = stream === allStream ? this.registry.connections() : this.registry.members(stream.slice(2))
    if (recipients === undefined) return { total: 0, sent: 0, failed: 0, skipped: 0, dropped: 0 }
    return await fanOut(recipients, outbound, exclude, this.options.maxConcurrentBroadcast, this.gate)
  }

  /** One message to one local connection; resolves true once written. */
  async writeDirect (connection: Connection, outbound: Outbound): Promise<boolean> {
    if (connection.catchUp?.holds(outbound) === true) return true
    if (!this.gate(connection, outbound.sizeFor(connection))) return false
    return await new Promise<boolean>((resolve) => {
      const written = (err?: Error): void => resolve(err == null && !transportDestroyed(connection.socket))
      if (!writeTo(connection, outbound.frameFor(connection), written)) resolve(false)
      else this.host.metrics?.sent(1, outbound.sizeFor(connection))
    })
  }

  /** A held or replayed message, once the connection's streams are known. */
  deliverOne (connection: Connection, message: Outbound): void {
    if (this.gate(connection, message.sizeFor(connection))) writeTo(connection, message.frameFor(connection))
  }

  /**
   * A connection may queue a message while its outbound buffer stays within
   * `maxBufferedAmount` (a message is always allowed onto an empty buffer, so one larger than
   * the cap still reaches a reader that keeps up). Past it: 'drop' counts and skips the
   * message, 'disconnect' closes with 4002. The buffer is what the reader has yet to take
   * (`waitingBytes`).
   */
  private createGate (protection: ProtectionStats): OutboundGate {
    const { maxBufferedAmount, slowConsumerPolicy } = this.options
    if (maxBufferedAmount === 0) return () => true
    return (connection, bytes) => {
      const buffered = waitingBytes(connection.socket)
      if (buffered === 0 || buffered + bytes <= maxBufferedAmount) return true
      protection.slowConsumerDrops++
      connection.droppedMessages++
      if (slowConsumerPolicy === 'disconnect' && this.host.closeConnection(connection, CloseCode.SLOW_CONSUMER, 'slow consumer', 'slow_consumer')) {
        protection.slowConsumerDisconnects++
        this.log.debug({ clientId: connection.id, bufferedBytes: buffered }, 'websocket slow consumer disconnected')
      }
      return false
    }
  }
}
