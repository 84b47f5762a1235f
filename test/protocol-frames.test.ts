import t from 'tap'
import {
  binaryMessageFrame, decodePositions, encodePositions, followFrame, maxEpochLength, maxOfferedStreams, maxPositionsLength,
  parseBinaryMessage, positionsProtocolPrefix, readOffer, selectProtocol, textMessageFrame, textPayload, unfollowFrame, type Positions
} from '../lib/protocol.js'

/** base64url of arbitrary text, written with Buffer so the codec under test is checked against another implementation. */
const b64 = (text: string): string => Buffer.from(text).toString('base64url')

void t.test('positions: round trips, base64url without padding, as the spec writes them', async (t) => {
  const positions: Positions = { '*': ['Xq3b9JkA', 41], 'c:alice': ['p0Lm2Qz8', 0], 'g:salle à manger 🍽': ['e', Number.MAX_SAFE_INTEGER] }
  const text = encodePositions(positions)!
  t.match(text, /^[\w-]+$/, 'only base64url characters: a valid header token')
  t.same(JSON.parse(Buffer.from(text, 'base64url').toString()), positions, 'the JSON object of the spec, UTF-8 inside')
  t.same(decodePositions(text), positions)
  t.same(decodePositions(b64('{"*":["Xq3b9JkA",41]}')), { '*': ['Xq3b9JkA', 41] }, 'what another implementation encodes decodes')
  t.same(decodePositions(encodePositions({})!), {}, 'no streams')
  for (let extra = 0; extra < 3; extra++) {
    // Lengths 4n, 4n+2 and 4n+3 of unpadded base64url all occur.
    const p: Positions = { '*': ['e'.repeat(1 + extra), 1] }
    t.same(decodePositions(encodePositions(p)!), p, `unpadded length ${encodePositions(p)!.length}`)
  }
})

void t.test('positions: anything malformed is undefined, never a partial result', async (t) => {
  const bad: Array<[string, string | undefined]> = [
    ['undefined', undefined],
    ['empty text', ''],
    ['not base64url', '{"*":["e",1]}'],
    ['standard base64 characters', Buffer.from('{"*":["e>?",1]}').toString('base64')],
    ['padding', b64('{"*":["e",1]}') + '=='],
    ['an impossible length', b64('{"*":["e",1]}') + 'A'],
    ['not JSON', b64('{"*":')],
    ['not UTF-8', Buffer.from([0x7b, 0xff, 0x7d]).toString('base64url')],
    ['an array', b64('[["e",1]]')],
    ['null', b64('null')],
    ['a number', b64('42')],
    ['a position that is not a pair', b64('{"*":["e",1,2]}')],
    ['a position that is an object', b64('{"*":{"e":"e","s":1}}')],
    ['an empty epoch', b64('{"*":["",1]}')],
    ['a numeric epoch', b64('{"*":[1,1]}')],
    [`an epoch of ${maxEpochLength + 1} characters`, b64(`{"*":["${'e'.repeat(maxEpochLength + 1)}",1]}`)],
    ['a negative seq', b64('{"*":["e",-1]}')],
    ['a fractional seq', b64('{"*":["e",1.5]}')],
    ['a seq beyond 2^53 - 1', b64('{"*":["e",9007199254740992]}')],
    ['a seq as text', b64('{"*":["e","1"]}')],
    ['an unknown kind of stream', b64('{"x:y":["e",1]}')],
    ['an empty stream', b64('{"":["e",1]}')],
    ['__proto__', b64('{"__proto__":["e",1]}')],
    [`${maxOfferedStreams + 1} streams`, b64(JSON.stringify(Object.fromEntries(Array.from({ length: maxOfferedStreams + 1 }, (_, i) => [`g:${i}`, ['e', 1]]))))]
  ]
  for (const [what, text] of bad) t.equal(decodePositions(text), undefined, what)
  t.same(decodePositions(b64(`{"*":["${'e'.repeat(maxEpochLength)}",0]}`)), { '*': ['e'.repeat(maxEpochLength), 0] }, `an epoch of ${maxEpochLength} characters is fine`)
  const most = Object.fromEntries(Array.from({ length: maxOfferedStreams }, (_, i) => [`g:${i}`, ['e', 1]]))
  t.same(decodePositions(b64(JSON.stringify(most))), most, `${maxOfferedStreams} streams are fine`)

  // The size bound is on the text as offered: 8 KiB.
  const sized = (length: number): string => {
    // One stream whose name pads the encoded JSON to exactly `length` characters.
    for (let name = 1; ; name++) {
      const text = b64(JSON.stringify({ [`g:${'n'.repeat(name)}`]: ['e', 1] }))
      if (text.length >= length) return text
    }
  }
  const atLimit = sized(maxPositionsLength - 3)
  t.ok(atLimit.length <= maxPositionsLength && decodePositions(atLimit) !== undefined, `${atLimit.length} characters decode`)
  const overLimit = sized(maxPositionsLength + 1)
  t.ok(overLimit.length > maxPositionsLength, `${overLimit.length} characters`)
  t.equal(decodePositions(overLimit), undefined, 'past 8 KiB: refused')
})

void t.test('encodePositions refuses what the peer would refuse, so a client never offers it', async (t) => {
  t.equal(encodePositions({ '*': ['', 1] }), undefined, 'an empty epoch')
  t.equal(encodePositions({ '*': ['e'.repeat(maxEpochLength + 1), 1] }), undefined, 'a long epoch')
  t.equal(encodePositions({ '*': ['e', -1] }), undefined, 'a negative seq')
  t.equal(encodePositions({ room: ['e', 1] }), undefined, 'a stream of no known kind')
  t.equal(encodePositions(Object.fromEntries(Array.from({ length: maxOfferedStreams + 1 }, (_, i) => [`g:${i}`, ['e', 1]]))), undefined, 'too many streams')
  t.equal(encodePositions({ [`g:${'n'.repeat(maxPositionsLength)}`]: ['e', 1] }), undefined, 'too long')
})

void t.test('readOffer reads the token and positions from the subprotocol header; selectProtocol never picks them', async (t) => {
  const positions: Positions = { '*': ['E', 3], 'g:room': ['F', 7] }
  const header = `stabilizer.v1, stabilizer.token.abc.def, ${positionsProtocolPrefix}${encodePositions(positions)!}`
  t.same(readOffer(header), { offered: true, token: 'abc.def', positions })
  t.same(readOffer([`${positionsProtocolPrefix}${encodePositions(positions)!}`, 'stabilizer.v1']), { offered: true, token: undefined, positions }, 'any order, several header lines')
  t.same(readOffer(`stabilizer.v1, ${positionsProtocolPrefix}not*base64`), { offered: true, token: undefined, positions: undefined }, 'malformed positions: none')
  t.same(readOffer(undefined), { offered: false, token: undefined, positions: undefined })
  t.equal(selectProtocol(new Set([`${positionsProtocolPrefix}e30`, 'stabilizer.token.x', 'chat'])), 'chat')
  t.equal(selectProtocol(new Set([`${positionsProtocolPrefix}e30`])), false)
  t.equal(selectProtocol(new Set(['chat', 'stabilizer.v1'])), 'stabilizer.v1')
})

void t.test('text message frames: the spec\'s JSON, with or without a position', async (t) => {
  const frame = textMessageFrame('g:say "hi"', 'Xq3b', 41, textPayload('hello "you"'))
  t.equal(frame.toString(), '{"t":"m","c":"g:say \\"hi\\"","e":"Xq3b","s":41,"d":"hello \\"you\\""}')
  t.same(JSON.parse(frame.toString()), { t: 'm', c: 'g:say "hi"', e: 'Xq3b', s: 41, d: 'hello "you"' })
  t.same(JSON.parse(textMessageFrame('c:zoë', 'é', Number.MAX_SAFE_INTEGER, textPayload('ünïcode')).toString()), { t: 'm', c: 'c:zoë', e: 'é', s: Number.MAX_SAFE_INTEGER, d: 'ünïcode' }, 'UTF-8 stream, epoch and payload')
  t.equal(textMessageFrame('', '', 0, textPayload('x')).toString(), '{"t":"m","d":"x"}', 'no position: no c, e, s')
  t.throws(() => textMessageFrame('*', 'e', -1, textPayload('x')), RangeError)
  t.throws(() => textMessageFrame('*', 'e', 2 ** 53, textPayload('x')), RangeError)
  t.throws(() => textMessageFrame('*', 'e'.repeat(maxEpochLength + 1), 1, textPayload('x')), RangeError)
  t.throws(() => textMessageFrame('*', '', 1, textPayload('x')), RangeError, 'a stream without an epoch')
  t.throws(() => textMessageFrame('', '', 5, textPayload('x')), RangeError, 'a seq without a stream')
})

void t.test('binary message frames: the header decodes field by field, written and read', async (t) => {
  const payload = Buffer.from([0, 1, 2, 255])
  const frame = binaryMessageFrame('g:🍽', 'ép', 0x1_0000_0002, payload)
  const stream = Buffer.from('g:🍽')
  const epoch = Buffer.from('ép')
  const expected = Buffer.concat([
    Buffer.from([0, stream.length]), stream, Buffer.from([epoch.length]), epoch,
    Buffer.from([0, 0, 0, 1, 0, 0, 0, 2]), payload
  ])
  t.same(frame, expected, 'u16 BE stream length in UTF-8 bytes, stream, u8 epoch length, epoch, u64 BE seq, payload')
  t.same(parseBinaryMessage(frame), { stream: 'g:🍽', epoch: 'ép', seq: 0x1_0000_0002, payload: new Uint8Array(payload) })

  const none = binaryMessageFrame('', '', 0, payload)
  t.same(none, Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), payload]), 'no position: empty stream and epoch, seq 0')
  t.same(parseBinaryMessage(none), { stream: '', epoch: '', seq: 0, payload: new Uint8Array(payload) })

  const empty = parseBinaryMessage(binaryMessageFrame('*', 'e', Number.MAX_SAFE_INTEGER, new Uint8Array(0)))
  t.same(empty, { stream: '*', epoch: 'e', seq: Number.MAX_SAFE_INTEGER, payload: new Uint8Array(0) }, 'an empty payload; the largest seq')

  // A frame inside a larger buffer (ws hands out views): offsets are the view's.
  const pool = Buffer.concat([Buffer.from('junk'), frame, Buffer.from('more')])
  t.same(parseBinaryMessage(pool.subarray(4, 4 + frame.length)), parseBinaryMessage(frame), 'a view at an offset')
})

void t.test('binary message frames: stream length at the u16 boundary, epoch at its longest', async (t) => {
  for (const length of [255, 256, 0xffff]) {
    const name = `g:${'s'.repeat(length - 2)}`
    const frame = binaryMessageFrame(name, 'e', 7, Buffer.from('x'))
    t.equal(frame.readUInt16BE(0), length, `a ${length}-byte stream`)
    t.match(parseBinaryMessage(frame), { stream: name, epoch: 'e', seq: 7 })
  }
  t.throws(() => binaryMessageFrame(`g:${'s'.repeat(0xffff - 1)}`, 'e', 1, Buffer.from('x')), RangeError, '65536 bytes do not fit the header')
  // Multi-byte characters count as bytes, not characters.
  t.throws(() => binaryMessageFrame(`g:${'é'.repeat(0x8000)}`, 'e', 1, Buffer.from('x')), RangeError, '32 770 characters, 65 538 bytes')
  const longEpoch = '€'.repeat(maxEpochLength)
  const frame = binaryMessageFrame('*', longEpoch, 1, Buffer.from('x'))
  t.equal(frame[3], maxEpochLength * 3, `a ${maxEpochLength}-character epoch of 3-byte characters fits the u8 length`)
  t.match(parseBinaryMessage(frame), { epoch: longEpoch, seq: 1 })
  t.throws(() => binaryMessageFrame('*', 'e', 1.5, Buffer.from('x')), RangeError)
})

void t.test('binary message frames: truncated, non-UTF-8 and out-of-range headers are undefined', async (t) => {
  const frame = binaryMessageFrame('g:room', 'ep', 9, Buffer.from('data'))
  const header = frame.length - 4
  for (let length = 0; length < header; length++) t.equal(parseBinaryMessage(frame.subarray(0, length)), undefined, `cut at ${length} of ${header} header bytes`)
  t.match(parseBinaryMessage(frame.subarray(0, header)), { stream: 'g:room', payload: new Uint8Array(0) }, 'the whole header and no payload')
  const badStream = Buffer.from(frame)
  badStream[2] = 0xff
  t.equal(parseBinaryMessage(badStream), undefined, 'a stream that is not UTF-8')
  const badEpoch = Buffer.from(frame)
  badEpoch[2 + 6 + 1] = 0xc3 // a lone lead byte
  t.equal(parseBinaryMessage(badEpoch), undefined, 'an epoch that is not UTF-8')
  const huge = Buffer.from(frame)
  huge.writeUInt32BE(0x20_0000, 2 + 6 + 1 + 2)
  t.equal(parseBinaryMessage(huge), undefined, 'a seq of 2^53: not a safe integer')
  huge.writeUInt32BE(0x1f_ffff, 2 + 6 + 1 + 2)
  huge.writeUInt32BE(0xffff_ffff, 2 + 6 + 1 + 6)
  t.match(parseBinaryMessage(huge), { seq: Number.MAX_SAFE_INTEGER }, '2^53 - 1 is')
})

void t.test('follow and unfollow frames', async (t) => {
  t.same(JSON.parse(followFrame('g:room "1"', 'Ep', 12)), { t: 'follow', c: 'g:room "1"', e: 'Ep', s: 12 })
  t.equal(followFrame('g:room', 'Ep', 12), '{"t":"follow","c":"g:room","e":"Ep","s":12}')
  t.equal(unfollowFrame('g:room'), '{"t":"unfollow","c":"g:room"}')
})
