/**
 * Calls nobody awaits (adapter writes, user hooks): their failures are logged, never
 * unhandled.
 */
import type { FastifyBaseLogger } from 'fastify'

/** Logs the rejection of an adapter call that runs in the background. */
export function inBackground (log: FastifyBaseLogger, call: Promise<unknown>, what: string): void {
  call.catch((err: unknown) => { log.warn({ err, call: what }, 'websocket adapter call failed') })
}

/** Runs a user hook (sync or async); a throw or a rejection is logged under the hook's name. */
export function runHook (log: FastifyBaseLogger, name: string, call: () => unknown): void {
  const fail = (err: unknown): void => { log.error({ err, hook: name }, `${name} hook failed`) }
  try {
    const result = call()
    if (result instanceof Promise) result.catch(fail)
  } catch (err) {
    fail(err)
  }
}
