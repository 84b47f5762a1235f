import t, { type Test } from 'tap'
import type { StreamEntry, StreamPosition, StreamRead } from '../lib/adapter/adapter.js'
import { StreamSubscriptions } from '../lib/adapter/redis-streams.js'

// The Redis adapter's ordering buffer on its own, fed by a source this test scripts: the races
// between a stream's subscription starting and this instance's own publishes to it. (The
// adapter over a real Redis is tested in redis-adapter.test.ts and the contract suite.)

function entry (seq: number, origin = 'me'): StreamEntry {
  return { stream: 'c:kim', epoch: 'e1', seq, origin, ts: 1000 + seq, payload: Buffer.from(`"m${seq}"`), binary: false }
}

function scriptedSource () {
  let answerTop: (position: StreamPosition) => void = () => {}
  const delivered: number[] = []
  const source = {
    instanceId: 'me',
    gapTimeout: 20,
    channelOf: (stream: string) => `ch:${stream}`,
    subscribe: async () => {},
    unsubscribe: async () => {},
    top: async () => await new Promise<StreamPosition>((resolve) => { answerTop = resolve }),
    read: async (): Promise<StreamRead> => ({ top: { epoch: 'e1', seq: 1 }, entries: [], missed: 0 }),
    deliver: (e: StreamEntry) => { delivered.push(e.seq); return `delivered ${e.seq}` },
    subscriberReady: () => true
  }
  return { source, delivered, answerTop: (position: StreamPosition) => { answerTop(position) } }
}

/**
 * `c:kim` subscribed while its starting position (the top) is still being read, and this
 * instance's own entry `seq` published meanwhile: returns its publish's local result.
 */
async function publishDuringStart (t: Test, seq: number) {
  const { source, delivered, answerTop } = scriptedSource()
  const streams = new StreamSubscriptions(source)
  t.teardown(() => { streams.close() })
  streams.subscribe('c:kim')
  await new Promise((resolve) => setImmediate(resolve))
  return { streams, delivered, answerTop, local: streams.delivered(entry(seq)) }
}

void t.test('an own publish that lands before the subscription\'s starting position settles instead of hanging', async (t) => {
  // The client came back to this instance while a direct send to it was in flight: the stream is
  // subscribed again, its start (the top) is still being read, and the publish's entry (seq 1)
  // is already in the log, so the top will include it.
  const { delivered, answerTop, local } = await publishDuringStart(t, 1)
  answerTop({ epoch: 'e1', seq: 1 })
  let timer: NodeJS.Timeout | undefined
  const settled = await Promise.race([local.then((value) => ({ value })), new Promise((resolve) => { timer = setTimeout(() => { resolve('hung') }, 2000) })])
  clearTimeout(timer)
  t.same(settled, { value: undefined }, 'the publish resolves, without a local result')
  t.same(delivered, [], 'and the entry, before where the stream starts here, is not delivered')
})

void t.test('an own publish after the starting position is delivered in its place once the start is known', async (t) => {
  const { streams, delivered, answerTop, local } = await publishDuringStart(t, 2)
  answerTop({ epoch: 'e1', seq: 1 })
  streams.receive('ch:c:kim', Buffer.from('e1 2 1002 [0,"me",null]\n"m2"'))
  t.equal(await local, 'delivered 2', 'the publish resolves with its local delivery')
  t.same(delivered, [2])
})
