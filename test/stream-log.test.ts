import t from 'tap'
import { entryOverheadBytes, StreamLog } from '../lib/adapter/stream-log.js'

const message = (text: string) => ({ payload: Buffer.from(JSON.stringify(text)), binary: false })

void t.test('a stream log numbers entries from 1 and reads after a position', async (t) => {
  const log = new StreamLog('*', { maxEntries: 100, maxBytes: 1 << 20, retentionMs: 60_000 })
  const now = Date.now()
  t.same(log.top, { epoch: log.epoch, seq: 0 })
  for (let i = 0; i < 5; i++) t.equal(log.append(message(`m${i}`), 'i1', now).seq, i + 1)
  const read = log.read({ epoch: log.epoch, seq: 2 }, 10, now)
  t.same(read.entries.map((e) => e.seq), [3, 4, 5])
  t.equal(read.missed, 0)
  t.same(log.read({ epoch: log.epoch, seq: 3 }, 1, now).entries.map((e) => e.seq), [4], 'limit')
  t.same(log.read({ epoch: log.epoch, seq: 99 }, 10, now).entries, [], 'a position past the end is up to date')
  t.same(log.read(undefined, 10, now).entries.length, 5, 'from the oldest kept')
})

void t.test('bounds: count, bytes and age trim the oldest, and a reader behind them is told how many it missed', async (t) => {
  const log = new StreamLog('g:x', { maxEntries: 3, maxBytes: 1 << 20, retentionMs: 1000 })
  const now = Date.now()
  for (let i = 0; i < 10; i++) log.append(message('x'), 'i1', now)
  t.equal(log.size, 3)
  const read = log.read({ epoch: log.epoch, seq: 2 }, 10, now)
  t.same(read.entries.map((e) => e.seq), [8, 9, 10])
  t.equal(read.missed, 5)
  const bytes = new StreamLog('g:y', { maxEntries: 100, maxBytes: 2 * (entryOverheadBytes + 5), retentionMs: 1000 })
  for (let i = 0; i < 4; i++) bytes.append({ payload: Buffer.from('abcde'), binary: true }, 'i1', now)
  t.equal(bytes.size, 2, 'the byte bound')
  t.equal(bytes.bytes, 2 * (entryOverheadBytes + 5))
  log.expire(now + 1000)
  t.equal(log.size, 0, 'entries older than the retention go')
  t.equal(log.read({ epoch: log.epoch, seq: 9 }, 10, now + 1000).missed, 1)
})

void t.test('a position of another epoch is reported as lost history (-1), with what the new epoch holds', async (t) => {
  const log = new StreamLog('c:a', { maxEntries: 10, maxBytes: 1 << 20, retentionMs: 60_000 })
  log.append(message('new'), 'i1', Date.now())
  const read = log.read({ epoch: 'old-epoch', seq: 40 }, 10, Date.now())
  t.equal(read.missed, -1)
  t.same(read.entries.map((e) => e.seq), [1])
})
