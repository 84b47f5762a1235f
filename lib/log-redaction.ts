// Keeps reconnect tokens out of request logs when a client puts them in the query string
// (`?token=…`): a serializer the app passes to its logger, since a plugin cannot set one.
import type { FastifyRequest } from 'fastify'

const tokenInQuery = /([?&](?:token|positions)=)[^&#]*/g

/** `url` with the values of its `token` and `positions` query parameters replaced by `[redacted]`. */
export function redactReconnectToken (url: string): string {
  return url.replace(tokenInQuery, '$1[redacted]')
}

/**
 * Fastify's default request serializer (method, url, version, host, remote address and port) with the
 * reconnect token taken out of the url. Pass it to Fastify:
 * `Fastify({ logger: { serializers: { req: redactedRequestSerializer } } })`.
 * Not needed with the client library, which offers tokens in `Sec-WebSocket-Protocol`.
 */
export function redactedRequestSerializer (request: FastifyRequest): Record<string, unknown> {
  return {
    method: request.method,
    url: redactReconnectToken(request.url),
    version: request.headers?.['accept-version'],
    host: request.host,
    remoteAddress: request.ip,
    remotePort: request.socket?.remotePort
  }
}
