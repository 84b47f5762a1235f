import t from 'tap'
import { Cluster } from 'ioredis'
import { redisAdapter, type RedisAdapterOptions } from '../lib/adapter/redis.js'
import { partitionCount, partitionOf, partitionTags, slotCount, slotOf, streamTag } from '../lib/adapter/redis-partitions.js'
import { adapterContract, startInstances, text, until, type AdapterFactory, type Instance } from './fixtures/adapter-contract.js'
import { clusterScenarios } from './fixtures/cluster-scenarios.js'
import { startRedisCluster } from './fixtures/redis-cluster.js'
import { buildApp, listen, waitFor, type TestApp } from './fixtures/server.js'
import { ProtocolPeer } from './fixtures/protocol-peer.js'
import { settled } from './fixtures/hang-guard.js'

// The Redis adapter on a 3-master Redis Cluster (one replica each, for the failover), with
// sharded pub/sub: the same contract and the same multi-instance scenarios as on one Redis.
const cluster = await startRedisCluster({ masters: 3, replicas: 1 })
t.teardown(cluster.stop)

const clients = new Set<Cluster>()
/** The user's own Cluster client, as an app would make it. */
function clusterClient (): Cluster {
  const client = new Cluster(cluster.startupNodes, { enableOfflineQueue: false, redisOptions: { maxRetriesPerRequest: 0 } })
  client.on('error', () => {})
  clients.add(client)
  return client
}
t.teardown(() => { for (const client of clients) client.disconnect() })

let sets = 0
function factory (extra: Partial<RedisAdapterOptions> = {}): AdapterFactory {
  return async (instances) => {
    const keyPrefix = `c${process.pid}-${sets++}:`
    const own = Array.from({ length: instances }, () => clusterClient())
    return {
      adapters: own.map((redis) => redisAdapter({ redis, keyPrefix, instanceTtl: 1500, ...extra })),
      cleanup: async () => { for (const client of own) { client.disconnect(); clients.delete(client) } }
    }
  }
}

void t.test('the adapter contract, on a 3-master Redis Cluster', async (t) => {
  adapterContract(t, factory())
})

void t.test('the multi-instance scenarios, on a 3-master Redis Cluster', async (t) => {
  let apps = 0
  clusterScenarios(t, () => {
    const keyPrefix = `apps${process.pid}-${apps++}:`
    return () => redisAdapter({ redis: clusterClient(), keyPrefix, instanceTtl: 1500 })
  })
})

void t.test('cluster options: the adapter makes its own Cluster connections and closes them', async (t) => {
  const keyPrefix = `opts${process.pid}:`
  const [a, b] = await startInstances(t, async () => ({
    adapters: [0, 1].map(() => redisAdapter({ redis: { cluster: cluster.startupNodes, options: { redisOptions: { connectionName: 'fws-test' } } }, keyPrefix, instanceTtl: 1500 }))
  }))
  b.adapter.subscribe('g:own')
  await b.adapter.top('g:own')
  await a.adapter.publish('g:own', text('through its own Cluster client'))
  await until(() => seqsOf(b, 'g:own').length === 1, 'b to get it')
  await until(() => a.adapter.cluster()?.instances === 2, 'both instances to see each other')
  t.same(a.adapter.cluster(), { instances: 2, connections: 0 })
  await a.adapter.stop()
  await b.adapter.stop()
  const named = async (): Promise<number> => {
    let count = 0
    for (const node of cluster.nodes.filter((n) => n.alive)) count += (await cluster.cli(node.port, 'CLIENT', 'LIST')).split('\n').filter((line) => line.includes('name=fws-test')).length
    return count
  }
  await until(async () => await named() === 0, 'every connection the adapters made to be closed')
  t.equal(await named(), 0, 'stop() closed the connections it made')
})

function seqsOf (instance: Instance, stream: string): number[] {
  return instance.delivered.filter((e) => e.stream === stream).map((e) => e.seq)
}

function range (from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i)
}

void t.test('partitions: each tag in its share of the slots, spread evenly over the masters', async (t) => {
  t.equal(partitionTags.length, partitionCount)
  const perMaster = new Map<number, number>()
  for (const [partition, tag] of partitionTags.entries()) {
    const slot = slotOf(tag)
    t.ok(slot >= partition * slotCount / partitionCount && slot < (partition + 1) * slotCount / partitionCount, `partition ${partition} (${tag}) at slot ${slot}`)
    const master = await cluster.masterOf(slot)
    perMaster.set(master.port, (perMaster.get(master.port) ?? 0) + 1)
  }
  const counts = [...perMaster.values()]
  t.equal(counts.length, 3, 'every master serves partitions')
  t.ok(Math.max(...counts) - Math.min(...counts) <= 1, `as evenly as 16 over 3 can be (${counts.join(', ')})`)
  // Redis's own CLUSTER KEYSLOT agrees with the slots computed here.
  t.equal(Number(await cluster.cli(cluster.nodes[0].port, 'CLUSTER', 'KEYSLOT', `{${partitionTags[5]}}x`)), slotOf(partitionTags[5]))
  const streams = Array.from({ length: 1600 }, (_, i) => `g:room-${i}`)
  const perPartition = new Array<number>(partitionCount).fill(0)
  for (const stream of streams) perPartition[partitionOf(stream)]++
  t.ok(Math.min(...perPartition) > 50, `streams spread over the partitions (${perPartition.join(', ')})`)
})

void t.test('publishing uses sharded pub/sub only (SPUBLISH, never PUBLISH)', async (t) => {
  const stat = async (name: string): Promise<number> => {
    let calls = 0
    for (const node of cluster.nodes.filter((n) => n.alive)) {
      const info = await cluster.cli(node.port, 'INFO', 'commandstats')
      const match = new RegExp(`cmdstat_${name}:calls=(\\d+)`).exec(info)
      if (match !== null) calls += Number(match[1])
    }
    return calls
  }
  const [a, b] = await startInstances(t, factory())
  b.adapter.subscribe('g:sharded')
  await b.adapter.top('g:sharded')
  const before = { spublish: await stat('spublish'), publish: await stat('publish') }
  for (let i = 0; i < 10; i++) await a.adapter.publish('g:sharded', text(`s${i}`))
  await until(() => seqsOf(b, 'g:sharded').length === 10, 'b to get 10')
  t.ok(await stat('spublish') - before.spublish >= 10, 'SPUBLISH for each message')
  t.equal(await stat('publish') - before.publish, 0, 'no classic PUBLISH (it would reach every shard)')
})

void t.test('a slot migration: the subscription comes back and nothing is missed', async (t) => {
  const [a, b] = await startInstances(t, factory({ positionCheckInterval: 600_000 }))
  const stream = 'g:migrating'
  b.adapter.subscribe(stream)
  await b.adapter.top(stream)
  await a.adapter.publish(stream, text('before'))
  await until(() => seqsOf(b, stream).length === 1, 'the first entry')
  const slot = slotOf(streamTag(stream))
  const from = await cluster.masterOf(slot)
  const to = cluster.nodes.slice(0, 3).find((node) => node.alive && node.port !== from.port)!
  await cluster.moveSlot(slot, to.port)
  t.equal((await cluster.masterOf(slot)).port, to.port, 'the slot moved to another master')
  for (let i = 0; i < 5; i++) {
    const outcome = await settled(a.adapter.publish(stream, text(`after${i}`)), 'a publish after the migration')
    t.ok(outcome.ok, `publish ${i} after the migration succeeds`)
  }
  await until(() => seqsOf(b, stream).length === 6, 'b to get every entry after the migration', 20_000)
  t.same(seqsOf(b, stream), range(1, 6), 'in order, once each')
  // Live notifications again, not only reads of the log: a later entry arrives on its own.
  await a.adapter.publish(stream, text('live'))
  await until(() => seqsOf(b, stream).length === 7, 'a live entry after the migration', 20_000)
  t.same(b.delivered.map((e) => JSON.parse(String(e.payload)) as string), ['before', ...range(0, 4).map((i) => `after${i}`), 'live'])
})

/** A stream whose master still has a live replica (the failover tests kill masters). */
async function streamWithReplica (name: string): Promise<string> {
  for (let i = 0; ; i++) {
    const stream = `${name}-${i}`
    const master = await cluster.masterOf(slotOf(streamTag(stream)))
    const replica = await cluster.replicaOf(master).catch(() => undefined)
    if (replica?.alive === true) return stream
  }
}

// The failover tests come last: each kills a master (its replica takes over).
void t.test('a failover to a replica that lagged: lost entries are reported, re-issued positions delivered', async (t) => {
  const [a, b] = await startInstances(t, factory({ commandTimeout: 500 }))
  const stream = await streamWithReplica('g:lagging')
  b.adapter.subscribe(stream)
  await b.adapter.top(stream)
  for (let i = 1; i <= 3; i++) await a.adapter.publish(stream, text(`kept${i}`))
  const master = await cluster.masterOf(slotOf(streamTag(stream)))
  const replica = await cluster.replicaOf(master)
  await until(async () => (await cluster.cli(master.port, 'INFO', 'replication')).includes(`port=${replica.port},state=online`), 'the replica to be in sync')
  await until(() => seqsOf(b, stream).length === 3, 'b to get the first 3')
  // The replica stops receiving; three more entries reach only the master, then it dies.
  cluster.freeze(replica, true)
  // Cut its link too: what the master had sent would otherwise wait in the socket buffers.
  await cluster.cli(master.port, 'CLIENT', 'KILL', 'TYPE', 'replica')
  for (let i = 4; i <= 6; i++) await a.adapter.publish(stream, text(`lost${i}`))
  await until(() => seqsOf(b, stream).length === 6, 'b to get all 6 live')
  const position = await b.adapter.top(stream)
  await cluster.kill(master)
  cluster.freeze(replica, false)
  await cluster.waitHealthy()
  t.equal((await cluster.masterOf(slotOf(streamTag(stream)))).port, replica.port, 'the lagging replica took over')
  const read = await b.adapter.read(stream, position, 100)
  t.equal(read.missed, -1, 'a reader at seq 6 is told its history was lost (the stream went back to 3)')
  t.equal(read.top.seq, 3, 'the new master has the first 3 only')
  for (let i = 4; i <= 6; i++) await a.adapter.publish(stream, text(`new${i}`))
  await until(() => b.delivered.filter((e) => e.stream === stream).length === 9, 'b to deliver the re-issued positions').catch((err) => { throw new Error(`${String(err)}: ${JSON.stringify(b.delivered.filter((e) => e.stream === stream).map((e) => [e.seq, e.ts, String(e.payload)]))}`) })
  t.same(b.delivered.filter((e) => e.stream === stream).map((e) => JSON.parse(String(e.payload)) as string),
    ['kept1', 'kept2', 'kept3', 'lost4', 'lost5', 'lost6', 'new4', 'new5', 'new6'], 'the messages published after the failover are not mistaken for ones already delivered')
})

void t.test('the plugin on a lossy failover: the resuming client is told its history was lost, then served', async (t) => {
  const keyPrefix = `lossy${process.pid}:`
  const apps: TestApp[] = []
  const urls: string[] = []
  for (let i = 0; i < 2; i++) {
    const app = await buildApp({ secrets: ['s'.repeat(32) + '-cluster-failover'], adapter: redisAdapter({ redis: clusterClient(), keyPrefix, instanceTtl: 1500, commandTimeout: 500 }) })
    apps.push(app)
    urls.push(await listen(app))
  }
  t.teardown(async () => { for (const app of apps) await app.close() })
  const [a, b] = apps
  const stream = await streamWithReplica('g:desk')
  const group = stream.slice(2)
  const first = await ProtocolPeer.open(`${urls[0]}/ws/ivy`)
  a.stabilizer.join('ivy', group)
  await first.until(() => first.positions[stream] !== undefined)
  for (let i = 1; i <= 3; i++) await b.stabilizer.broadcast(`kept${i}`, { group })
  const master = await cluster.masterOf(slotOf(streamTag(stream)))
  const replica = await cluster.replicaOf(master)
  await until(async () => (await cluster.cli(master.port, 'INFO', 'replication')).includes(`port=${replica.port},state=online`), 'the replica to be in sync')
  cluster.freeze(replica, true)
  await cluster.cli(master.port, 'CLIENT', 'KILL', 'TYPE', 'replica')
  for (let i = 4; i <= 6; i++) await b.stabilizer.broadcast(`lost${i}`, { group })
  await first.until(() => first.messagesOf(stream).length === 6)
  first.socket.terminate()
  await waitFor(() => a.stabilizer.getConnectionCount() === 0)
  await cluster.kill(master)
  // While the shard is away a broadcast settles (it is not queued for later).
  const during = await settled(b.stabilizer.broadcast('during', { group }), 'a broadcast while the shard is away')
  t.ok(during.ok, 'the broadcast settled with a result')
  cluster.freeze(replica, false)
  await cluster.waitHealthy()
  const second = await ProtocolPeer.open(`${urls[1]}/ws/ivy`, { token: first.welcome!.token!, positions: first.positionsNow() })
  t.match(second.welcome!.resume, { outcome: 'partial', historyLost: true }, 'told that history was lost, not given a silent gap')
  if (second.welcome!.resume?.stateRestored === true) t.ok(b.stabilizer.getGroups('ivy').includes(group), 'its session came back with its group')
  else b.stabilizer.join('ivy', group) // its session's keys lived on the killed master too
  // Until the subscriptions are back on the new master, a broadcast may reach only the local clients.
  for (let i = 0; !second.texts.includes('after'); i++) {
    if (i === 100) throw new Error('no broadcast after the failover reached the resumed client')
    await a.stabilizer.broadcast('after', { group })
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  t.pass('delivery resumed')
})

void t.test('a master killed mid-traffic: nothing hangs, its replica takes over, delivery resumes', async (t) => {
  const [a, b] = await startInstances(t, factory({ commandTimeout: 500 }))
  const stream = await streamWithReplica('g:failover')
  const other = 'g:elsewhere'
  const slot = slotOf(streamTag(stream))
  let otherStream = other
  for (let i = 0; (await cluster.masterOf(slotOf(streamTag(otherStream)))).port === (await cluster.masterOf(slot)).port; i++) otherStream = `${other}-${i}`
  for (const name of [stream, otherStream]) {
    b.adapter.subscribe(name)
    await b.adapter.top(name)
  }
  const failures: unknown[] = []
  const traffic = { running: true }
  let published = 0
  const flowing = (async () => {
    for (let i = 0; traffic.running; i++) {
      const outcome = await settled(a.adapter.publish(stream, text(`t${i}`)), 'a publish during the failover')
      if (outcome.ok) published++
      else {
        failures.push(outcome.error)
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }
  })()
  await until(() => seqsOf(b, stream).length >= 5, 'traffic to flow')
  const before = await a.adapter.top(stream)
  const victim = await cluster.masterOf(slot)
  await cluster.kill(victim)
  await until(() => failures.length > 0, 'a publish to fail while the master is gone')
  // The other masters keep serving their partitions meanwhile.
  const elsewhere = await settled(a.adapter.publish(otherStream, text('on another master')), 'a publish to another master')
  t.ok(elsewhere.ok, 'a stream on another master is published to during the failover')
  await cluster.waitHealthy()
  const promoted = await cluster.masterOf(slot)
  t.not(promoted.port, victim.port, `the replica (${promoted.port}) took over the slot`)
  const seenBefore = published
  await until(() => published >= seenBefore + 5, 'publishes to succeed again', 20_000)
  traffic.running = false
  await flowing
  t.ok(failures.every((err) => err instanceof Error), 'failed publishes rejected with an error')
  const last = await a.adapter.top(stream)
  await until(() => seqsOf(b, stream).at(-1) === last.seq, 'b to deliver up to the top', 20_000)
  const entries = b.delivered.filter((e) => e.stream === stream)
  const epochs = [...new Set(entries.map((e) => e.epoch))]
  t.ok(epochs.every((epoch) => {
    const seqs = entries.filter((e) => e.epoch === epoch).map((e) => e.seq)
    return seqs.every((seq, i) => i === 0 || seq > seqs[i - 1])
  }), `b delivered each epoch in order, never twice (${epochs.length} epoch(s))`)
  t.ok(entries.length >= published * 0.5, `b delivered what was published (${entries.length} of ${published})`)
  await until(() => seqsOf(b, otherStream).length === 1, 'the other stream too')
  // A reader whose position is from before the kill is told exactly: continued (0 missed), or lost (-1).
  const read = await b.adapter.read(stream, before, 1000)
  t.ok(read.missed === 0 || read.missed === -1, `a position from before the failover reads honestly (missed ${read.missed})`)
  if (read.missed === 0) t.equal(read.entries[0]?.seq, before.seq + 1, 'and continues right after it')
})
