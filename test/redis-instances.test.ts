import t from 'tap'
import { redisAdapter } from '../lib/adapter/redis.js'
import { clusterScenarios } from './fixtures/cluster-scenarios.js'
import { startRedisServer } from './fixtures/redis-server.js'

// The same scenarios as two apps on a MemoryHub, through a real Redis of the test's own.
const server = await startRedisServer()
t.teardown(server.stop)
let clusters = 0
clusterScenarios(t, () => {
  const keyPrefix = `apps${process.pid}-${clusters++}:`
  return () => redisAdapter({ redis: server.url, keyPrefix, instanceTtl: 1500 })
})
