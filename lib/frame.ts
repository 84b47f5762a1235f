/** RFC 6455 server frames built by the plugin itself (no `ws` internals involved). */

/**
 * A broadcast framed once: the whole unmasked data frame a server sends (RFC 6455 §5.2: FIN,
 * opcode, payload length, payload), built once and written as is to every plain recipient,
 * instead of `ws` building a header and issuing a corked two-buffer write per socket.
 */
export function wholeFrame (payload: Buffer, binary: boolean): Buffer {
  const length = payload.length
  const headerLength = length < 126 ? 2 : length < 65_536 ? 4 : 10
  const frame = Buffer.allocUnsafe(headerLength + length)
  frame[0] = 0x80 | (binary ? 0x2 : 0x1)
  if (headerLength === 2) {
    frame[1] = length
  } else if (headerLength === 4) {
    frame[1] = 126
    frame.writeUInt16BE(length, 2)
  } else {
    frame[1] = 127
    frame.writeUInt32BE(Math.floor(length / 2 ** 32), 2)
    frame.writeUInt32BE(length >>> 0, 6)
  }
  payload.copy(frame, headerLength)
  return frame
}
