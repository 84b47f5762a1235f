import t from 'tap'
import { Cluster } from 'ioredis'
import { redisAdapter, type RedisAdapterOptions } from '../lib/adapter/redis.js'
import { adapterContract, type AdapterFactory } from './fixtures/adapter-contract.js'
import { clusterScenarios } from './fixtures/cluster-scenarios.js'
import { startRedisCluster } from './fixtures/redis-cluster.js'

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
