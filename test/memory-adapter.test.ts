import t from 'tap'
import { MemoryAdapter, MemoryHub } from '../lib/adapter/memory.js'
import { adapterContract } from './fixtures/adapter-contract.js'

// The same contract as every adapter: several instances sharing one hub.
adapterContract(t, async (instances) => {
  const hub = new MemoryHub()
  return { adapters: Array.from({ length: instances }, () => new MemoryAdapter({ hub })) }
})
