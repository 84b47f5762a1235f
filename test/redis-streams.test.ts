import t, { type Test } from 'tap'
import type { StreamEntry, StreamRead } from '../lib/adapter/adapter.js'
import { StreamSubscriptions, type StreamStart } from '../lib/adapter/redis-streams.js'

// The Redis adapter's ordering buffer on its own, fed by a source this test scripts: the races
// between a stream's subscription starting and this instance's own publishes to it. (The
// adapter over a real Redis is tested in redis-adapter.test.ts and the contract suite.)

function entry (seq: number, origin = 'me'): StreamEntry {
  return { stream: 'c:kim', epoch: 'e1', seq, origin, ts: 1000 + seq, payload: Buffer.from(`"m${seq}"`), binary: false }
}

/** A source whose starting point the test answers, and whose log holds `log` (seqs after 0 of epoch e1). */
function scriptedSource (log: number[] = [], readGate: Promise<void> = Promise.resolve()) {
  let answerStart: (start: StreamStart) => void = () => {}
  const delivered: number[] = []
  const starts: number[] = []
  let reads = 0
  const source = {
    instanceId: 'me',
    gapTimeout: 20,
    channelOf: (stream: string) => `ch:${stream}`,
    subscribe: async () => {},
    unsubscribe: async () => {},
    start: async (_stream: string, since: number) => { starts.push(since); return await new Promise<StreamStart>((resolve) => { answerStart = resolve }) },
    read: async (_stream: string, after: { seq: number }): Promise<StreamRead> => {
      // What the log holds when the read reaches it; the answer may come later.
      const answer = { top: { epoch: 'e1', seq: Math.max(1, ...log) }, entries: log.filter((seq) => seq > after.seq).map((seq) => entry(seq, 'other')), missed: 0 }
      reads++
      await readGate
      return answer
    },
    deliver: (e: StreamEntry) => { delivered.push(e.seq); return `delivered ${e.seq}` },
    subscriberReady: () => true
  }
  return { source, delivered, starts, reads: () => reads, answerStart: (start: StreamStart) => { answerStart(start) } }
}

/**
 * `c:kim` subscribed while its starting position (the top) is still being read, and this
 * instance's own entry `seq` published meanwhile: returns its publish's local result.
 */
async function publishDuringStart (t: Test, seq: number) {
  const { source, delivered, answerStart } = scriptedSource()
  const streams = new StreamSubscriptions(source)
  t.teardown(() => { streams.close() })
  streams.subscribe('c:kim')
  await new Promise((resolve) => setImmediate(resolve))
  return { streams, delivered, answerStart, local: streams.delivered(entry(seq)) }
}

void t.test('an own publish that lands before the subscription\'s starting position settles instead of hanging', async (t) => {
  // The client came back to this instance while a direct send to it was in flight: the stream is
  // subscribed again, its start (the top) is still being read, and the publish's entry (seq 1)
  // is already in the log, so the top will include it.
  const { delivered, answerStart, local } = await publishDuringStart(t, 1)
  answerStart({ top: { epoch: 'e1', seq: 1 }, before: 1 })
  let timer: NodeJS.Timeout | undefined
  const settled = await Promise.race([local.then((value) => ({ value })), new Promise((resolve) => { timer = setTimeout(() => { resolve('hung') }, 2000) })])
  clearTimeout(timer)
  t.same(settled, { value: undefined }, 'the publish resolves, without a local result')
  t.same(delivered, [], 'and the entry, before where the stream starts here, is not delivered')
})

void t.test('an own publish after the starting position is delivered in its place once the start is known', async (t) => {
  const { streams, delivered, answerStart, local } = await publishDuringStart(t, 2)
  answerStart({ top: { epoch: 'e1', seq: 1 }, before: 1 })
  streams.receive('ch:c:kim', Buffer.from('e1 2 1002 [0,"me",null]\n"m2"'))
  t.equal(await local, 'delivered 2', 'the publish resolves with its local delivery')
  t.same(delivered, [2])
})

void t.test('entries published after the subscribe call, before the subscription was live, are read and delivered first', async (t) => {
  // Seqs 1–2 were published before the subscribe call, 3–4 after it but before the channel's
  // subscription took effect (no notification came for them), 5 once it was live.
  let releaseRead = (): void => {}
  const { source, delivered, starts, answerStart } = scriptedSource([1, 2, 3, 4], new Promise((resolve) => { releaseRead = resolve }))
  const streams = new StreamSubscriptions(source)
  t.teardown(() => { streams.close() })
  const asked = Date.now()
  streams.subscribe('g:room')
  await new Promise((resolve) => setImmediate(resolve))
  t.ok(starts.length === 1 && starts[0] >= asked - 1 && starts[0] <= Date.now(), 'the start is asked for the time of the subscribe call')
  streams.receive('ch:g:room', Buffer.from('e1 5 1005 [0,"other",null]\n"m5"'))
  answerStart({ top: { epoch: 'e1', seq: 4 }, before: 2 })
  await new Promise((resolve) => setImmediate(resolve))
  // The start is known and the window is being read: a follower must not take the top yet.
  let active = false
  const activating = streams.whenActive('g:room').then(() => { active = true })
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(active, false, 'not active while the window is read')
  releaseRead()
  await activating
  t.same(delivered, [3, 4, 5], 'the window read from the log, then the live notification, each once, in order')
})

void t.test('position: where delivery stands here, not the store\'s top, so a follower never takes an entry still on its way as sent', async (t) => {
  const { source, delivered, answerStart } = scriptedSource()
  const streams = new StreamSubscriptions(source)
  t.teardown(() => { streams.close() })
  t.equal(await streams.position('g:room'), undefined, 'not followed')
  streams.subscribe('g:room')
  let answered: unknown = 'nothing yet'
  const asking = streams.position('g:room').then((position) => { answered = position })
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(answered, 'nothing yet', 'no answer before the subscription is active')
  answerStart({ top: { epoch: 'e1', seq: 4 }, before: 4 })
  await asking
  t.same(answered, { epoch: 'e1', seq: 4 })
  // Seq 5 is in the store (its top says 5); its notification has not arrived.
  t.same(await streams.position('g:room'), { epoch: 'e1', seq: 4 }, 'an entry on its way is not counted')
  streams.receive('ch:g:room', Buffer.from('e1 5 1005 [0,"other",null]\n"m5"'))
  t.same(delivered, [5])
  t.same(await streams.position('g:room'), { epoch: 'e1', seq: 5 }, 'counted once delivered')
})

void t.test('position waits for the last entry\'s fan-out to finish: a follower is never told it has what its turn has not reached', async (t) => {
  const { source, answerStart } = scriptedSource()
  let finishFanOut = (): void => {}
  source.deliver = (e: StreamEntry) => new Promise<string>((resolve) => { finishFanOut = () => { resolve(`delivered ${e.seq}`) } }) as unknown as string
  const streams = new StreamSubscriptions(source)
  t.teardown(() => { streams.close() })
  streams.subscribe('g:room')
  await new Promise((resolve) => setImmediate(resolve))
  answerStart({ top: { epoch: 'e1', seq: 4 }, before: 4 })
  await streams.whenActive('g:room')
  streams.receive('ch:g:room', Buffer.from('e1 5 1005 [0,"other",null]\n"m5"'))
  let answered: unknown
  const asking = streams.position('g:room').then((position) => { answered = position })
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(answered, undefined, 'no answer while entry 5 is still being fanned out')
  finishFanOut()
  await asking
  t.same(answered, { epoch: 'e1', seq: 5 })
})

void t.test('a reconnect while the log is read reads again to the top once that read is done', async (t) => {
  let releaseRead = (): void => {}
  const log = [1, 2, 3]
  const { source, delivered, reads, answerStart } = scriptedSource(log, new Promise((resolve) => { releaseRead = resolve }))
  const streams = new StreamSubscriptions(source)
  t.teardown(() => { streams.close() })
  streams.subscribe('g:room')
  await new Promise((resolve) => setImmediate(resolve))
  answerStart({ top: { epoch: 'e1', seq: 3 }, before: 1 })
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(reads(), 1, 'the window is being read')
  // The subscriber reconnects meanwhile; seq 4 was published while it was away (no notification).
  log.push(4)
  await streams.resubscribe()
  releaseRead()
  await streams.whenActive('g:room')
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.same(delivered, [2, 3, 4], 'the window, then what the reconnect missed, each once, in order')
})
