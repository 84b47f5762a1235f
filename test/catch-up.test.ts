import t from 'tap'
import { MemoryAdapter, MemoryHub } from '../lib/adapter/memory.js'
import type { InstanceContext, StreamEntry } from '../lib/adapter/adapter.js'
import { ProtocolPeer } from './fixtures/protocol-peer.js'
import { buildApp, listen, waitFor } from './fixtures/server.js'

const secrets = ['c'.repeat(32) + '-catch-up-tests']

/**
 * A shared adapter whose live delivery to this instance can be held back, as a Redis
 * subscription's notifications can trail what a read on the command connection already sees.
 */
class LaggingAdapter extends MemoryAdapter {
  lagging = false
  private readonly late: StreamEntry[] = []
  private deliver: ((entry: StreamEntry) => unknown) | undefined

  override async start (instance: InstanceContext): Promise<void> {
    this.deliver = instance.handlers.deliver
    await super.start({
      ...instance,
      handlers: {
        ...instance.handlers,
        deliver: (entry) => {
          if (!this.lagging) return this.deliver!(entry)
          this.late.push(entry)
          return undefined
        }
      }
    })
  }

  /** Delivers what was held back, in order. */
  catchUp (): void {
    this.lagging = false
    for (const entry of this.late.splice(0)) this.deliver!(entry)
  }
}

async function lagged (t: { teardown: (fn: () => unknown) => void }) {
  const adapter = new LaggingAdapter({ hub: new MemoryHub() })
  const app = await buildApp({ secrets, heartbeatInterval: 0, adapter })
  t.teardown(() => app.close())
  return { adapter, app, url: await listen(app) }
}

// Found by the Redis soak test: a resume read its replay from the store while the same entries
// were still on their way to the instance's subscription, and the client got them twice.
void t.test('a replay read ahead of the live delivery does not send an entry twice', async (t) => {
  const { adapter, app, url } = await lagged(t)
  const first = await ProtocolPeer.open(`${url}/ws/ada`)
  app.stabilizer.join('ada', 'room')
  await first.until(() => first.positions['g:room'] !== undefined)
  first.socket.terminate()
  await waitFor(() => app.stabilizer.getConnectionCount() === 0)

  adapter.lagging = true
  await app.stabilizer.broadcast('one', { group: 'room' })
  await app.stabilizer.broadcast('two')
  await app.stabilizer.sendToClient('ada', 'three')
  const second = await ProtocolPeer.open(`${url}/ws/ada`, { token: first.welcome!.token!, positions: first.positionsNow() })
  await second.until(() => second.messages.length === 3)
  t.match(second.welcome!.resume, { outcome: 'full', replayed: 3 })
  adapter.catchUp()
  await app.stabilizer.broadcast('four', { group: 'room' })
  await second.until(() => second.texts.includes('four'))
  t.same(second.texts, ['one', 'two', 'three', 'four'], 'the late live copies of the replay are dropped')
  t.same(second.messages.filter((m) => m.duplicate), [])
  second.socket.terminate()
})

void t.test('a welcome whose positions are ahead of the live delivery does not send an entry twice', async (t) => {
  const { adapter, app, url } = await lagged(t)
  adapter.lagging = true
  await app.stabilizer.broadcast('before')
  const peer = await ProtocolPeer.open(`${url}/ws/bo`)
  t.same(peer.welcome!.positions['*'][1], 1, 'the welcome starts after the stored entry')
  adapter.catchUp()
  await app.stabilizer.broadcast('after')
  await peer.until(() => peer.texts.includes('after'))
  t.same(peer.texts, ['after'], 'the entry before the welcome is not sent late')
  peer.socket.terminate()
})

void t.test('a join whose follow position is ahead of the live delivery does not send an entry twice', async (t) => {
  const { adapter, app, url } = await lagged(t)
  const peer = await ProtocolPeer.open(`${url}/ws/cy`)
  adapter.lagging = true
  await app.stabilizer.broadcast('earlier', { group: 'team' })
  app.stabilizer.join('cy', 'team')
  await peer.until(() => peer.positions['g:team'] !== undefined)
  adapter.catchUp()
  await app.stabilizer.broadcast('later', { group: 'team' })
  await peer.until(() => peer.texts.includes('later'))
  t.same(peer.texts, ['later'], 'what came before the join is not sent late')
  peer.socket.terminate()
})
