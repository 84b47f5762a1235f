/** The error catalog: every coded error the plugin throws, with the close code of those that end a socket. */
import createError, { type FastifyErrorConstructor } from '@fastify/error'
import { CloseCode } from './close-codes.js'

/**
 * The error catalog. Every error is an `@fastify/error` class with an
 * `FST_WS_STABILIZER_*` code, exported under the name the Python library uses.
 * An error that ends a socket carries the WebSocket close code it was closed with
 * as `closeCode`.
 */

type ErrorWithCloseCode<E extends { code: string, statusCode?: number }> =
  FastifyErrorConstructor<E & { closeCode?: number }>

function define<C extends string, SC extends number> (
  code: C,
  message: string,
  statusCode: SC,
  closeCode?: number,
  Base: ErrorConstructor = Error
): ErrorWithCloseCode<{ code: C, statusCode: SC }> {
  const ErrorClass = createError(code, message, statusCode, Base)
  if (closeCode !== undefined) {
    Object.defineProperty(ErrorClass.prototype, 'closeCode', { value: closeCode, enumerable: false })
  }
  return ErrorClass as ErrorWithCloseCode<{ code: C, statusCode: SC }>
}

/** Base class: `err instanceof WebSocketStabilizerError` holds for every error below. */
export const WebSocketStabilizerError = define<string, number>('FST_WS_STABILIZER_ERROR', '%s', 500)
const Base = WebSocketStabilizerError as unknown as ErrorConstructor

/** A plugin option failed validation at register time. */
export const InvalidOptionError = define('FST_WS_STABILIZER_INVALID_OPTION', 'Invalid option "%s": %s', 500, undefined, Base)
/** No open connection has that client id. */
export const ConnectionNotFoundError = define('FST_WS_STABILIZER_CONNECTION_NOT_FOUND', 'No connection with client id "%s"', 404, undefined, Base)
/** `maxConnections` was reached (HTTP 503 before an upgrade; close 1013 for a manually connected socket). */
export const ConnectionLimitExceededError = define('FST_WS_STABILIZER_CONNECTION_LIMIT', 'Connection limit of %d reached', 503, CloseCode.TRY_AGAIN_LATER, Base)
/** A peer did not answer in time (heartbeat timeout). */
export const ConnectionTimeoutError = define('FST_WS_STABILIZER_CONNECTION_TIMEOUT', 'Client "%s" did not answer within %d ms', 408, CloseCode.ABNORMAL, Base)
/** A reconnect token has expired. */
export const TokenExpiredError = define('FST_WS_STABILIZER_TOKEN_EXPIRED', 'Reconnect token expired', 401, undefined, Base)
/** A reconnect token is malformed, tampered with, or already used. */
export const InvalidTokenError = define('FST_WS_STABILIZER_INVALID_TOKEN', 'Invalid reconnect token: %s', 401, undefined, Base)
/** A broadcast could not be delivered at all. */
export const BroadcastFailedError = define('FST_WS_STABILIZER_BROADCAST_FAILED', 'Broadcast failed: %s', 500, undefined, Base)
/** The stabilizer is shutting down and refuses new work (HTTP 503 before an upgrade). */
export const ShutdownError = define('FST_WS_STABILIZER_SHUTTING_DOWN', 'Server is shutting down', 503, CloseCode.SERVICE_RESTART, Base)
/** A write would exceed a memory budget. */
export const MemoryLimitExceededError = define('FST_WS_STABILIZER_MEMORY_LIMIT', 'Memory limit exceeded: %s', 507, undefined, Base)
/** The upgrade's Origin is not in `allowedOrigins` (cross-site WebSocket hijacking). */
export const OriginNotAllowedError = define('FST_WS_STABILIZER_ORIGIN_NOT_ALLOWED', 'Origin %s is not allowed', 403, undefined, Base)
/** A client IP is over `maxConnectionsPerIp` or `connectRatePerIp` (HTTP 429 before the upgrade). */
export const TooManyConnectionsError = define('FST_WS_STABILIZER_TOO_MANY_CONNECTIONS', '%s', 429, undefined, Base)
/** A reconnect-token request was not authorized (its caller does not hold that client id); the message says what proves it. */
export const TokenRequestForbiddenError = define('FST_WS_STABILIZER_TOKEN_REQUEST_FORBIDDEN', 'Not allowed to obtain a reconnect token for this client: %s', 403, undefined, Base)
/** A client asked `POST /reconnect-token` more often than `tokenRequestsPerMinute` (HTTP 429 with Retry-After). */
export const TooManyTokenRequestsError = define('FST_WS_STABILIZER_TOO_MANY_TOKEN_REQUESTS', 'Too many reconnect-token requests for this client: at most %d per minute, retry in %d s', 429, undefined, Base)
/** The plugin was registered twice on the same instance (it would decorate and hook everything twice). */
export const AlreadyRegisteredError = define('FST_WS_STABILIZER_ALREADY_REGISTERED', 'fastify-websocket-stabilizer is already registered on this instance: register it once, at the root (fastify-plugin shares it with every child context)', 500, undefined, Base)
/** The identity hook returned something that cannot be a client id. */
export const InvalidClientIdError = define('FST_WS_STABILIZER_INVALID_CLIENT_ID', 'Invalid client id: %s', 400, undefined, Base)
/** `metrics` is on but prom-client (an optional peer dependency) cannot be loaded. */
export const MetricsClientMissingError = define('FST_WS_STABILIZER_METRICS_CLIENT_MISSING', 'The metrics option needs prom-client: %s', 500, undefined, Base)
/** The adapter's shared store (Redis) could not be reached or did not answer in time. */
export const AdapterUnavailableError = define('FST_WS_STABILIZER_ADAPTER_UNAVAILABLE', 'Shared store unavailable: %s', 503, undefined, Base)

// Each error class also names its instance type, as a class declaration would.
/* eslint-disable @typescript-eslint/no-redeclare */
export type WebSocketStabilizerError = InstanceType<typeof WebSocketStabilizerError>
export type InvalidOptionError = InstanceType<typeof InvalidOptionError>
export type ConnectionNotFoundError = InstanceType<typeof ConnectionNotFoundError>
export type ConnectionLimitExceededError = InstanceType<typeof ConnectionLimitExceededError>
export type ConnectionTimeoutError = InstanceType<typeof ConnectionTimeoutError>
export type TokenExpiredError = InstanceType<typeof TokenExpiredError>
export type InvalidTokenError = InstanceType<typeof InvalidTokenError>
export type BroadcastFailedError = InstanceType<typeof BroadcastFailedError>
export type ShutdownError = InstanceType<typeof ShutdownError>
export type MemoryLimitExceededError = InstanceType<typeof MemoryLimitExceededError>
export type InvalidClientIdError = InstanceType<typeof InvalidClientIdError>
export type OriginNotAllowedError = InstanceType<typeof OriginNotAllowedError>
export type TooManyConnectionsError = InstanceType<typeof TooManyConnectionsError>
export type TokenRequestForbiddenError = InstanceType<typeof TokenRequestForbiddenError>
export type TooManyTokenRequestsError = InstanceType<typeof TooManyTokenRequestsError>
export type AlreadyRegisteredError = InstanceType<typeof AlreadyRegisteredError>
export type MetricsClientMissingError = InstanceType<typeof MetricsClientMissingError>
export type AdapterUnavailableError = InstanceType<typeof AdapterUnavailableError>
/* eslint-enable @typescript-eslint/no-redeclare */

/** Every error class of the catalog, by exported name (the README documents each code). */
export const errorCatalog = {
  WebSocketStabilizerError,
  InvalidOptionError,
  ConnectionNotFoundError,
  ConnectionLimitExceededError,
  ConnectionTimeoutError,
  TokenExpiredError,
  InvalidTokenError,
  BroadcastFailedError,
  ShutdownError,
  MemoryLimitExceededError,
  InvalidClientIdError,
  OriginNotAllowedError,
  TooManyConnectionsError,
  TokenRequestForbiddenError,
  TooManyTokenRequestsError,
  AlreadyRegisteredError,
  MetricsClientMissingError,
  AdapterUnavailableError
} as const
