import t from 'tap'
import { MemoryAdapter, MemoryHub } from '../lib/index.js'
import { clusterScenarios } from './fixtures/cluster-scenarios.js'

// Two apps in one process sharing a MemoryHub: cluster behaviour without Redis.
clusterScenarios(t, () => {
  const hub = new MemoryHub()
  return () => new MemoryAdapter({ hub })
})
