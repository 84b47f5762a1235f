/**
 * A storm of resuming `stabilizer.v1` clients against the same server's storm of fresh ones.
 * Per round, on one new stabilizer server (default options, listen backlog 4 096):
 * 1. N protocol clients connect at once (a fresh storm on a new server) and keep their
 *    reconnect tokens and positions;
 * 2. their connections are cut (terminated: the server keeps their sessions) and the server
 *    broadcasts `replay` messages that every one of them misses;
 * 3. in alternating order between rounds, the N clients come back at once offering token and
 *    positions (a resuming storm: each gets a welcome and its missed messages), and N new
 *    clients connect at once (a fresh storm on the now warm server). Every phase starts with no
 *    connection open.
 * Per phase: time until every client got its welcome (connections/s), until every replayed
 * message arrived, handshake failures (closed before the welcome; 4003 rejections apart), the
 * server's longest event-loop lag and its CPU time per connection (all threads).
 *
 * Run: npx tsx bench/resume-storm.ts [clients=5000] [rounds=3] [replay=10]; `--quick` for a smoke run;
 * `--profile=<dir>` writes a CPU profile of the server's main thread per phase (bench/cpu-profile.ts reads it).
 * Client processes run this file with `client <url> <count>`.
 */
import { mkdir } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { WebSocket } from 'ws'
import { spawnJson, type JsonProcess } from '../test/fixtures/json-process.js'

const clientsPerProcess = 5_000

interface PhaseResult { ms: number, replayMs: number, welcomed: number, failures: number, rejected: number, replayed: number, notFull: number }

if (process.argv[2] === 'client') await client(process.argv[3], Number(process.argv[4]))
else await controller()

/** One client process: `count` protocol clients answering JSON commands on stdin. */
async function client (url: string, count: number): Promise<void> {
  const print = (value: unknown): void => { process.stdout.write(`${JSON.stringify(value)}\n`) }
  /** Per client, what it resumes with: its latest token and its positions (stream → [epoch, seq]). */
  const sessions: Array<{ token: string, positions: Record<string, [string, number]> } | undefined> = []
  let sockets: WebSocket[] = []

  async function open (resume: boolean): Promise<PhaseResult> {
    const started = performance.now()
    const result: PhaseResult = { ms: 0, replayMs: 0, welcomed: 0, failures: 0, rejected: 0, replayed: 0, notFull: 0 }
    let settled = 0
    let replaysLeft = count
    await new Promise<void>((resolve) => {
      const replayDone = (): void => {
        if (--replaysLeft === 0) result.replayMs = performance.now() - started
        if (settled === count && replaysLeft === 0) resolve()
      }
      const settle = (): void => {
        if (++settled === count) result.ms = performance.now() - started
        if (settled === count && replaysLeft === 0) resolve()
      }
      sockets = []
      for (let i = 0; i < count; i++) {
        const session = sessions[i]
        const protocols = ['stabilizer.v1']
        if (resume && session !== undefined) {
          protocols.push(`stabilizer.token.${session.token}`, `stabilizer.pos.${Buffer.from(JSON.stringify(session.positions)).toString('base64url')}`)
        }
        const socket = new WebSocket(url, protocols)
        sockets.push(socket)
        let welcomed = false
        let expected = 0
        socket.on('error', () => {})
        socket.on('close', (code) => {
          if (welcomed) {
            // Closed before its replay was complete: counted as done so the phase ends.
            if (expected > 0) {
              expected = 0
              replayDone()
            }
            return
          }
          result.failures++
          if (code === 4003) result.rejected++
          settle()
          replayDone()
        })
        socket.on('message', (data, isBinary) => {
          if (isBinary) return
          const frame = JSON.parse(data.toString()) as Record<string, unknown>
          const mine = sessions[i]
          if (frame.t === 'welcome') {
            welcomed = true
            result.welcomed++
            const report = frame.resume as { outcome: string, replayed: number } | null
            sessions[i] = { token: frame.token as string, positions: frame.positions as Record<string, [string, number]> }
            expected = report?.replayed ?? 0
            if (report !== null && report.outcome !== 'full') result.notFull++
            settle()
            if (expected === 0) replayDone()
          } else if (frame.t === 'm' && mine !== undefined) {
            if (typeof frame.c === 'string') mine.positions[frame.c] = [frame.e as string, frame.s as number]
            result.replayed++
            if (--expected === 0) replayDone()
          } else if (frame.t === 'follow' && mine !== undefined) {
            mine.positions[frame.c as string] = [frame.e as string, frame.s as number]
          } else if (frame.t === 'ping') {
            socket.send(JSON.stringify({ t: 'pong', ts: frame.ts }))
          }
        })
      }
    })
    return result
  }

  /** Ends every socket: terminated (the server keeps the sessions) or closed normally (it forgets them). */
  async function end (terminate: boolean): Promise<Record<string, unknown>> {
    await Promise.all(sockets.map(async (socket) => {
      if (socket.readyState === WebSocket.CLOSED) return
      const closed = new Promise((resolve) => socket.once('close', resolve))
      if (terminate) socket.terminate()
      else socket.close(1000)
      await closed
    }))
    sockets = []
    return {}
  }

  print({ ready: true })
  createInterface({ input: process.stdin }).on('line', (line) => {
    const command = JSON.parse(line) as { cmd: string }
    const done = command.cmd === 'fresh' ? open(false) : command.cmd === 'resume' ? open(true) : end(command.cmd === 'cut')
    done.then(print, (err: unknown) => print({ error: String(err) }))
  })
  await new Promise((resolve) => process.stdin.once('end', resolve))
  for (const socket of sockets) socket.terminate()
  process.exit(0)
}

async function controller (): Promise<void> {
  const quick = process.argv.includes('--quick')
  const profileDir = process.argv.find((arg) => arg.startsWith('--profile='))?.slice('--profile='.length)
  const args = process.argv.slice(2).filter((arg) => !arg.startsWith('--'))
  const clients = quick ? 100 : Number(args[0] ?? 5_000)
  const rounds = quick ? 1 : Number(args[1] ?? 3)
  const replay = quick ? 3 : Number(args[2] ?? 10)
  const settings = JSON.stringify({ backlog: 4096, stabilizer: { maxRetainedSessions: 4 * clients } })
  const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

  const spawnClients = async (url: string): Promise<JsonProcess[]> => {
    const group: JsonProcess[] = []
    for (let left = clients; left > 0; left -= clientsPerProcess) {
      group.push(spawnJson(process.execPath, ['--import', 'tsx', 'bench/resume-storm.ts', 'client', url, String(Math.min(clientsPerProcess, left))]))
    }
    await Promise.all(group.map(async (process) => await process.next()))
    return group
  }

  /** Every client of `group` at once; the server's lag and CPU over the phase. */
  const phase = async (server: JsonProcess, group: JsonProcess[], cmd: 'fresh' | 'resume', label: string): Promise<Record<string, number>> => {
    await server.ask({ cmd: 'lagStart' })
    if (profileDir !== undefined) await server.ask({ cmd: 'profileStart', intervalUs: 100 })
    const cpuBefore = await server.ask({ cmd: 'cpu' })
    const results = await Promise.all(group.map(async (process) => await process.ask({ cmd }) as unknown as PhaseResult))
    const cpuAfter = await server.ask({ cmd: 'cpu' })
    if (profileDir !== undefined) await server.ask({ cmd: 'profileStop', path: path.join(profileDir, `${label}.cpuprofile`) })
    const { maxLagMs } = await server.ask({ cmd: 'lagStop' }) as { maxLagMs: number }
    const sum = (pick: (r: PhaseResult) => number): number => results.reduce((total, r) => total + pick(r), 0)
    const ms = Math.max(...results.map((r) => r.ms))
    return {
      ms,
      rate: clients / (ms / 1000),
      replayMs: Math.max(...results.map((r) => r.replayMs)),
      failures: sum((r) => r.failures),
      rejected: sum((r) => r.rejected),
      notFull: sum((r) => r.notFull),
      replayed: sum((r) => r.replayed) / Math.max(1, sum((r) => r.welcomed)),
      lag: maxLagMs,
      cpuUs: ((cpuAfter.cpuUs as number) - (cpuBefore.cpuUs as number)) / clients
    }
  }

  /** Ends `group`'s connections and waits until the server holds none. */
  const end = async (server: JsonProcess, group: JsonProcess[], how: 'cut' | 'close'): Promise<void> => {
    await Promise.all(group.map(async (process) => await process.ask({ cmd: how })))
    while ((await server.ask({ cmd: 'connections' })).connections !== 0) await sleep(20)
  }

  const phases = ['fresh, new server', 'resume', 'fresh, warm server'] as const
  const results = new Map<string, Array<Record<string, number>>>(phases.map((name) => [name, []]))
  const started = Date.now()
  if (profileDir !== undefined) await mkdir(profileDir, { recursive: true })
  for (let round = 0; round < rounds; round++) {
    const server = spawnJson(process.execPath, ['--expose-gc', '--import', 'tsx', 'bench/server.ts', 'stabilizer', settings])
    const { port } = await server.next() as { port: number }
    const url = `ws://127.0.0.1:${port}/ws`
    const holders = await spawnClients(url)
    const newcomers = await spawnClients(url)
    results.get('fresh, new server')!.push(await phase(server, holders, 'fresh', `fresh-new-${round}`))
    await end(server, holders, 'cut')
    await server.ask({ cmd: 'sequential', count: replay, size: 100, spacingMs: 0 })
    const order = round % 2 === 0 ? ['resume', 'fresh'] : ['fresh', 'resume']
    for (const which of order) {
      if (which === 'resume') {
        results.get('resume')!.push(await phase(server, holders, 'resume', `resume-${round}`))
        await end(server, holders, 'close')
      } else {
        results.get('fresh, warm server')!.push(await phase(server, newcomers, 'fresh', `fresh-warm-${round}`))
        await end(server, newcomers, 'close')
      }
    }
    await Promise.all([...holders, ...newcomers].map(async (process) => await process.stop()))
    await server.stop()
  }

  const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
  const cell = (name: string, key: string, digits = 0): string => {
    const values = results.get(name)!.map((r) => r[key])
    const range = values.length > 1 ? ` (${Math.min(...values).toFixed(digits)}–${Math.max(...values).toFixed(digits)})` : ''
    return `${median(values).toFixed(digits)}${range}`
  }
  const ratio = (name: string, key: string): string => {
    const base = median(results.get('fresh, warm server')!.map((r) => r[key]))
    return base === 0 ? '—' : `${(median(results.get(name)!.map((r) => r[key])) / base).toFixed(2)}×`
  }
  console.log(`## Resuming storm: ${clients} stabilizer.v1 clients, ${replay} messages to replay each${quick ? ' (quick smoke run, not a measurement)' : ''}\n`)
  console.log(`Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, Node ${process.version}; load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} at the end. ${rounds} round(s), one server each; cells are medians (min–max); ratios against the fresh storm on the warm server of the same rounds.\n`)
  console.log('| storm | time to every welcome ms | connections/s | until every replay ms | handshake failures (4003) | resumes not full | messages replayed per client | longest loop lag ms | server CPU µs per connection | connections/s vs fresh (warm) | lag vs fresh (warm) | CPU vs fresh (warm) |')
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for (const name of phases) {
    const rejected = median(results.get(name)!.map((r) => r.rejected))
    console.log(`| ${name} | ${cell(name, 'ms')} | ${cell(name, 'rate')} | ${cell(name, 'replayMs')} | ${cell(name, 'failures')} (${rejected}) | ${cell(name, 'notFull')} | ${cell(name, 'replayed', 1)} | ${cell(name, 'lag', 1)} | ${cell(name, 'cpuUs', 1)} | ${ratio(name, 'rate')} | ${ratio(name, 'lag')} | ${ratio(name, 'cpuUs')} |`)
  }
  console.log(`\nTotal time: ${Math.round((Date.now() - started) / 1000)} s.`)
}
