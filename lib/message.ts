/** What `sendToClient` and `broadcast` accept: text, binary, or a value sent as JSON text. */
export type OutboundMessage = string | Buffer | ArrayBuffer | ArrayBufferView | object | number | boolean | null

/** A message serialized once, ready to hand to any number of sockets. */
export interface EncodedMessage {
  readonly data: Buffer | string
  readonly binary: boolean
}

/**
 * Serializes a message: strings go as text frames, bytes as binary frames, anything else as
 * JSON text. With `shared`, text is turned into a Buffer once so that every socket of a
 * broadcast writes the same bytes instead of encoding the string again.
 * @throws TypeError when the value cannot be serialized as JSON.
 */
export function encodeMessage (message: OutboundMessage, shared = false): EncodedMessage {
  if (typeof message === 'string') return { data: shared ? Buffer.from(message) : message, binary: false }
  if (Buffer.isBuffer(message)) return { data: message, binary: true }
  if (message instanceof ArrayBuffer) return { data: Buffer.from(message), binary: true }
  if (ArrayBuffer.isView(message)) return { data: Buffer.from(message.buffer, message.byteOffset, message.byteLength), binary: true }
  const json = JSON.stringify(message)
  if (json === undefined) throw new TypeError(`Cannot send a value of type ${typeof message}`)
  return { data: shared ? Buffer.from(json) : json, binary: false }
}
