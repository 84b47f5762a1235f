// Reconciles the client-id limit with Fastify's maxParamLength: a `:clientId` longer than the
// router allows is refused by Fastify (414) before the plugin sees it, so say so once.
import type { FastifyBaseLogger, RouteOptions } from 'fastify'
import { maxClientIdLength } from './stabilizer.js'

/**
 * An `onRoute` hook that warns, once per app, when a stabilized websocket route takes its
 * client id from a `:clientId` path param and Fastify's `maxParamLength` (100 by default) is
 * below the plugin's own limit of 256 characters.
 */
export function createParamLengthCheck (maxParamLength: number | undefined, log: FastifyBaseLogger): (route: RouteOptions & { websocket?: boolean }) => void {
  const limit = maxParamLength ?? 100
  let warned = false
  return function checkParamLength (route) {
    if (warned || limit >= maxClientIdLength || route.websocket !== true) return
    if ((route.config as { stabilizer?: boolean } | undefined)?.stabilizer === false) return
    if (!/(^|\/):clientId(\/|$|\()/.test(route.url)) return
    warned = true
    log.warn(`fastify-websocket-stabilizer: ${route.url} takes the client id from the path, where Fastify's maxParamLength (${limit}) refuses ids longer than ${limit} characters with HTTP 414 before the plugin sees them; the plugin accepts up to ${maxClientIdLength}. Create Fastify with { routerOptions: { maxParamLength: ${maxClientIdLength} } } to accept them (or ignore this if your ids are short)`)
  }
}
