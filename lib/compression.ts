// What the `compression` option means: its schema, and the permessage-deflate options each
// strategy gives ws ('per-socket': ws deflates every send; 'shared': see shared-deflate.ts).
import { Type, type Static } from '@sinclair/typebox'
import type { PerMessageDeflateOptions } from 'ws'
import { leastSharedWindowBits, SharedDeflate } from './shared-deflate.js'
import { withSharedDeflate } from './wire.js'

/** The object form of `compression`; every key is optional. */
export const CompressionSchema = Type.Object({
  strategy: Type.Optional(Type.Union([Type.Literal('per-socket'), Type.Literal('shared')], {
    description: '\'per-socket\' (ws deflates every message for every socket) or \'shared\' (a broadcast is deflated once for all recipients; needs serverNoContextTakeover)'
  })),
  threshold: Type.Optional(Type.Integer({ minimum: 0, description: 'messages shorter than this many bytes are sent uncompressed' })),
  level: Type.Optional(Type.Integer({ minimum: -1, maximum: 9, description: 'zlib compression level: 0 (none) to 9 (smallest), -1 for zlib\'s default (6)' })),
  memLevel: Type.Optional(Type.Integer({ minimum: 1, maximum: 9, description: 'zlib memory level, 1 to 9 (more memory, faster and smaller)' })),
  serverMaxWindowBits: Type.Optional(Type.Integer({ minimum: 8, maximum: 15, description: 'largest LZ77 window the server compresses with, in bits (8 to 15); a client asking for a smaller one gets its own' })),
  serverNoContextTakeover: Type.Optional(Type.Boolean({ description: 'compress each message on its own, without the previous ones as context' }))
}, { additionalProperties: false })

/**
 * `compression: { … }`. Defaults: `strategy` 'per-socket', `threshold` 1024, `level` -1
 * (zlib's 6), `memLevel` 8, `serverMaxWindowBits` 15, `serverNoContextTakeover` false
 * ('per-socket') / true ('shared', which requires it).
 */
export type CompressionOptions = Static<typeof CompressionSchema>

/** The `compression` option: false (default), true (ws's permessage-deflate defaults, per socket), or the object form. */
export type Compression = boolean | CompressionOptions

/** What is wrong with a `compression` object the schema accepts, as `[key, detail]`; undefined when nothing is. */
export function compressionConflict (compression: CompressionOptions): [string, string] | undefined {
  if (compression.strategy !== 'shared') return undefined
  if (compression.serverNoContextTakeover === false) {
    return ['serverNoContextTakeover', 'the \'shared\' strategy sends the same deflated bytes to every socket, which needs server_no_context_takeover: leave it unset or true']
  }
  if (compression.serverMaxWindowBits !== undefined && compression.serverMaxWindowBits < leastSharedWindowBits) {
    return ['serverMaxWindowBits', `the 'shared' strategy needs at least ${leastSharedWindowBits} (zlib makes no raw deflate stream with an 8-bit window)`]
  }
  return undefined
}

/** The `perMessageDeflate` option for ws (through @fastify/websocket). */
export function perMessageDeflateOf (compression: Compression): boolean | PerMessageDeflateOptions {
  if (typeof compression === 'boolean') return compression
  const { strategy, threshold, level, memLevel, serverMaxWindowBits, serverNoContextTakeover } = compression
  const options: PerMessageDeflateOptions = {}
  if (threshold !== undefined) options.threshold = threshold
  if (serverMaxWindowBits !== undefined) options.serverMaxWindowBits = serverMaxWindowBits
  if (level !== undefined || memLevel !== undefined) {
    options.zlibDeflateOptions = {}
    if (level !== undefined) options.zlibDeflateOptions.level = level
    if (memLevel !== undefined) options.zlibDeflateOptions.memLevel = memLevel
  }
  if (strategy !== 'shared') {
    if (serverNoContextTakeover !== undefined) options.serverNoContextTakeover = serverNoContextTakeover
    return options
  }
  options.serverNoContextTakeover = true
  return withSharedDeflate(options, new SharedDeflate({ threshold, level, memLevel }))
}
