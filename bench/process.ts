import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

export const root = fileURLToPath(new URL('..', import.meta.url))

/** A child process spoken to in JSON lines: one command on stdin, one reply on stdout. */
export interface JsonProcess {
  child: ChildProcess
  /** The next line the process prints. */
  next: () => Promise<Record<string, unknown>>
  /** Sends a command and resolves with its reply. */
  ask: (command: Record<string, unknown>) => Promise<Record<string, unknown>>
  /** Ends stdin (the process closes and exits) and waits for the exit; SIGKILL after 10 s. */
  stop: () => Promise<void>
}

export function spawnJson (command: string, args: string[]): JsonProcess {
  const child = spawn(command, args, { cwd: root, stdio: ['pipe', 'pipe', 'inherit'] })
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
  const next = async (): Promise<Record<string, unknown>> => {
    const { value, done } = await lines.next()
    if (done === true) throw new Error(`${args.join(' ')} exited`)
    const parsed = JSON.parse(value as string) as Record<string, unknown>
    if (typeof parsed.error === 'string') throw new Error(parsed.error)
    return parsed
  }
  return {
    child,
    next,
    ask: async (commandLine) => { child.stdin!.write(`${JSON.stringify(commandLine)}\n`); return await next() },
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = once(child, 'exit')
      child.stdin!.end()
      const killer = setTimeout(() => child.kill('SIGKILL'), 10_000)
      await exited
      clearTimeout(killer)
    }
  }
}
