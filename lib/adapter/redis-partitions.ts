/**
 * The hash tag of a stream's keys and channel: one of a fixed number of partitions whose tags
 * lie in even shares of the Redis Cluster slots, so partitions spread evenly over masters.
 */
/** Redis Cluster's slot count. */
export const slotCount = 16384

/** How many partitions the streams are spread over. */
export const partitionCount = 16

const crcTable = new Uint16Array(256)
for (let i = 0; i < 256; i++) {
  let crc = i << 8
  for (let bit = 0; bit < 8; bit++) crc = (crc & 0x8000) !== 0 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
  crcTable[i] = crc
}

/** The slot of a hash tag (CRC16/XMODEM mod 16384, as Redis Cluster computes it). */
export function slotOf (tag: string): number {
  let crc = 0
  for (const byte of Buffer.from(tag)) crc = ((crc << 8) & 0xffff) ^ crcTable[((crc >> 8) ^ byte) & 0xff]
  return crc % slotCount
}

// Hashing names straight to slots leaves some masters with more streams than others (CRC16
// of short similar names is uneven), hence the search for one tag per share of the slots.
function findTag (partition: number): string {
  const from = Math.floor(partition * slotCount / partitionCount)
  const to = Math.floor((partition + 1) * slotCount / partitionCount)
  for (let n = 0; ; n++) {
    const tag = `p${partition}.${n}`
    const slot = slotOf(tag)
    if (slot >= from && slot < to) return tag
  }
}

/** The tag of each partition, in order. */
export const partitionTags: readonly string[] = Array.from({ length: partitionCount }, (_, partition) => findTag(partition))

/** The partition of a stream (FNV-1a of its name). */
export function partitionOf (stream: string): number {
  let hash = 0x811c9dc5
  for (const byte of Buffer.from(stream)) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0
  return hash % partitionCount
}

/** The hash tag of a stream's keys and channel. */
export function streamTag (stream: string): string {
  return partitionTags[partitionOf(stream)]
}
