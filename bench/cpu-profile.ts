/**
 * Reads a V8 CPU profile (`.cpuprofile`, as `node --cpu-prof` or the inspector writes it) into
 * the figures the benchmarks print: busy time, self time by frame and by origin (this library,
 * ws, Fastify, Node…), and inclusive time by frame (each sample counted once per frame, so
 * recursion is not counted twice).
 */

interface CallFrame { functionName: string, url: string, lineNumber: number, columnNumber: number }
interface ProfileNode { id: number, callFrame: CallFrame, children?: number[] }
export interface CpuProfile { nodes: ProfileNode[], startTime: number, endTime: number, samples: number[], timeDeltas: number[] }

export interface FrameTime { frame: string, origin: string, ms: number }

export interface ProfileSummary {
  /** Window covered by the profile, ms. */
  windowMs: number
  /** Samples that were not (idle), ms. */
  busyMs: number
  /** Self time per origin, ms, largest first. */
  byOrigin: Array<{ origin: string, ms: number }>
  /** Self time per frame, largest first. */
  self: FrameTime[]
  /** Inclusive time per frame, largest first. */
  inclusive: FrameTime[]
}

/** Where a frame's code comes from: the library, a package, Node's own JavaScript, or V8's pseudo-frames. */
export function originOf (url: string, functionName: string): string {
  if (url === '') return functionName.startsWith('(') ? functionName : '(native)'
  if (url.startsWith('node:')) return 'node'
  const inModules = url.lastIndexOf('/node_modules/')
  if (inModules >= 0) {
    const rest = url.slice(inModules + '/node_modules/'.length).split('/')
    return rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]
  }
  if (url.includes('/lib/')) return 'stabilizer lib'
  if (url.includes('/bench/')) return 'bench harness'
  return 'other'
}

function frameName (frame: CallFrame): string {
  const file = frame.url === '' ? '' : frame.url.replace(/^.*\/node_modules\//, '').replace(/^file:\/\/.*?\/(lib|bench|test)\//, '$1/').replace(/^node:/, 'node:')
  // tsx's output keeps a module on one line: the column then tells its functions apart.
  const at = frame.lineNumber === 0 ? `@${frame.columnNumber}` : `:${frame.lineNumber + 1}`
  return `${frame.functionName === '' ? '(anonymous)' : frame.functionName} ${file}${file === '' ? '' : at}`.trim()
}

export function summarize (profile: CpuProfile): ProfileSummary {
  const byId = new Map<number, ProfileNode>()
  const parent = new Map<number, number>()
  for (const node of profile.nodes) {
    byId.set(node.id, node)
    for (const child of node.children ?? []) parent.set(child, node.id)
  }
  const self = new Map<string, FrameTime>()
  const inclusive = new Map<string, FrameTime>()
  const origins = new Map<string, number>()
  let busy = 0
  let total = 0
  for (let i = 0; i < profile.samples.length; i++) {
    // timeDeltas[i] is the time before sample i; the time a sample stands for is the gap after it.
    const us = i + 1 < profile.timeDeltas.length ? profile.timeDeltas[i + 1] : 0
    const ms = us / 1000
    total += ms
    const leaf = byId.get(profile.samples[i])!
    if (leaf.callFrame.functionName === '(idle)') continue
    busy += ms
    const leafName = frameName(leaf.callFrame)
    const origin = originOf(leaf.callFrame.url, leaf.callFrame.functionName)
    origins.set(origin, (origins.get(origin) ?? 0) + ms)
    const entry = self.get(leafName) ?? { frame: leafName, origin, ms: 0 }
    entry.ms += ms
    self.set(leafName, entry)
    const seen = new Set<string>()
    for (let id: number | undefined = leaf.id; id !== undefined; id = parent.get(id)) {
      const node = byId.get(id)!
      const name = frameName(node.callFrame)
      if (seen.has(name)) continue
      seen.add(name)
      const at = inclusive.get(name) ?? { frame: name, origin: originOf(node.callFrame.url, node.callFrame.functionName), ms: 0 }
      at.ms += ms
      inclusive.set(name, at)
    }
  }
  const sorted = (map: Map<string, FrameTime>): FrameTime[] => [...map.values()].sort((a, b) => b.ms - a.ms)
  return {
    windowMs: total,
    busyMs: busy,
    byOrigin: [...origins].map(([origin, ms]) => ({ origin, ms })).sort((a, b) => b.ms - a.ms),
    self: sorted(self),
    inclusive: sorted(inclusive)
  }
}

/** Time under the first frame whose name starts with `prefix`, split by the frame called directly below it and by leaf frame. */
export function breakdown (profile: CpuProfile, prefix: string): { ms: number, callees: FrameTime[], leaves: FrameTime[] } {
  const byId = new Map<number, ProfileNode>()
  const parent = new Map<number, number>()
  for (const node of profile.nodes) {
    byId.set(node.id, node)
    for (const child of node.children ?? []) parent.set(child, node.id)
  }
  const callees = new Map<string, FrameTime>()
  const leaves = new Map<string, FrameTime>()
  const add = (map: Map<string, FrameTime>, node: ProfileNode | undefined, ms: number): void => {
    const name = node === undefined ? '(self)' : frameName(node.callFrame)
    const entry = map.get(name) ?? { frame: name, origin: node === undefined ? '' : originOf(node.callFrame.url, node.callFrame.functionName), ms: 0 }
    entry.ms += ms
    map.set(name, entry)
  }
  let total = 0
  for (let i = 0; i < profile.samples.length; i++) {
    const ms = (i + 1 < profile.timeDeltas.length ? profile.timeDeltas[i + 1] : 0) / 1000
    const chain: ProfileNode[] = []
    for (let id: number | undefined = profile.samples[i]; id !== undefined; id = parent.get(id)) chain.push(byId.get(id)!)
    // The outermost match, so a recursive frame is counted once.
    let at = -1
    for (let j = chain.length - 1; j >= 0; j--) if (frameName(chain[j].callFrame).startsWith(prefix)) { at = j; break }
    if (at < 0) continue
    total += ms
    add(callees, at === 0 ? undefined : chain[at - 1], ms)
    add(leaves, chain[0], ms)
  }
  const sorted = (map: Map<string, FrameTime>): FrameTime[] => [...map.values()].sort((a, b) => b.ms - a.ms)
  return { ms: total, callees: sorted(callees), leaves: sorted(leaves) }
}

// CLI: npx tsx bench/cpu-profile.ts <file.cpuprofile> [connections] [frame prefix…]
// Prints, per frame prefix, its inclusive time (µs per connection when given) and what it calls.
if (import.meta.url === `file://${process.argv[1]}`) {
  const { readFileSync } = await import('node:fs')
  const [file, connectionsArg, ...prefixes] = process.argv.slice(2)
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile
  const per = Number(connectionsArg ?? 1)
  const unit = per > 1 ? 'µs/conn' : 'ms'
  const show = (ms: number): string => (per > 1 ? (ms * 1000 / per).toFixed(1) : ms.toFixed(1))
  for (const prefix of prefixes) {
    const { ms, callees, leaves } = breakdown(profile, prefix)
    console.log(`\n${prefix}: ${show(ms)} ${unit}`)
    console.log('  calls:')
    for (const frame of callees.slice(0, 12)) console.log(`    ${show(frame.ms).padStart(7)}  ${frame.frame}`)
    console.log('  leaves:')
    for (const frame of leaves.slice(0, 12)) console.log(`    ${show(frame.ms).padStart(7)}  ${frame.frame}`)
  }
}
