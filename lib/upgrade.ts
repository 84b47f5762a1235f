/** The upgrade path: admission before the handshake (limits, identity, tokens) and registration right after it. */
import { randomFillSync } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyBaseLogger, FastifyReply, FastifyRequest, HookHandlerDoneFunction, RouteOptions } from 'fastify'
import type { WebSocket, WebSocketServer } from 'ws'
import { CloseCode } from './close-codes.js'
import { ConnectionLimitExceededError, InvalidClientIdError, InvalidTokenError, OriginNotAllowedError, ShutdownError, TokenExpiredError, TooManyConnectionsError } from './errors.js'
import type { AdmissionTicket } from './admission.js'
import { decodePositions, readOffer, type Positions } from './protocol.js'
import type { TokenClaims } from './tokens.js'
import type { ResolvedOptions } from './options.js'
import { checkClientId, type ResumeRequest, type Stabilizer } from './stabilizer.js'

/**
 * How the stabilizer hooks into `@fastify/websocket`:
 * 1. a route-level `preHandler` on every stabilized websocket route admits the upgrade before
 *    it happens (shutdown → 503, identity → 401/403/400, `maxConnections` → 503) and reserves
 *    a slot;
 * 2. `wss` emits 'connection' with the raw request synchronously just before the route
 *    handler runs: the socket is registered there, so no message can arrive unseen, and this
 *    works whichever plugin was registered first;
 * 3. when the stabilizer registered `@fastify/websocket` itself, its `onRoute` hook runs
 *    first and also wraps each websocket handler so a throw or rejection closes with 1011.
 */

interface Admission {
  readonly clientId: string
  readonly request: FastifyRequest
  /** The slot and per-IP count this upgrade holds. */
  readonly ticket: AdmissionTicket
  /** What a reconnect token resumes (its session, taken from the adapter). */
  readonly resume: ResumeRequest | undefined
  /** Set once the admission became a connection or was given back. */
  settled: boolean
}

/**
 * A reconnect token offered in the subprotocol (`stabilizer.token.*`) that failed: the upgrade
 * goes ahead so that the client, which cannot read an HTTP status from a browser, learns why
 * from the close code (4003) and reason. Nothing is registered and the route handler never runs.
 */
interface InBandRefusal {
  readonly refused: string
}

const kRefusal = Symbol('fastify-websocket-stabilizer.refusal')

const kAdmission = Symbol('fastify-websocket-stabilizer.admission')
type AdmittedRequest = IncomingMessage & { [kAdmission]?: Admission, [kRefusal]?: InBandRefusal }
type AdmittedSocket = Socket & { [kAdmission]?: Admission }

/** Seconds a client refused at `maxConnections` is asked to wait. */
export const retryAfterLimitSeconds = 5
/** Seconds a client refused during shutdown is asked to wait (another instance should take it). */
export const retryAfterShutdownSeconds = 1

/**
 * The default identity: the route's `clientId` param; else the client id of the reconnect
 * token presented (a route without the param resumes the token's identity); else a random id.
 */
export function defaultIdentify (request: FastifyRequest, tokenClientId?: string): string {
  const clientId = (request.params as Record<string, unknown> | undefined)?.clientId
  return typeof clientId === 'string' ? clientId : tokenClientId ?? randomId()
}

/** Random bytes for default ids, refilled once per `idsPerPool` ids. */
const idsPerPool = 256
const idPool = Buffer.allocUnsafe(16 * idsPerPool)
let idsLeft = 0

/**
 * A random id: 128 random bits as 22 URL-safe characters. One native call makes it a flat
 * string (a `randomUUID()` is built from ~20 pieces that V8 keeps as a tree), and the bytes
 * come from a pool filled 256 ids at a time.
 */
function randomId (): string {
  if (idsLeft === 0) {
    randomFillSync(idPool)
    idsLeft = idsPerPool
  }
  const at = 16 * --idsLeft
  return idPool.toString('base64url', at, at + 16)
}

/** The metadata of every auto-registered connection: none, shared instead of one `{}` each. */
const noMetadata: Readonly<Record<string, unknown>> = Object.freeze({})

/** An upgrade that offers no resume (nothing to parse); a failed `identify` is still refused in-band. */
const noOffer: ResumeOffer = Object.freeze({ token: undefined, inBand: true, positions: undefined })

interface ResumeOffer { readonly token: string | undefined, readonly inBand: boolean, readonly positions: Positions | undefined }

/**
 * The resume an upgrade request asks for: a token in the `token` query parameter or offered
 * as the subprotocol `stabilizer.token.<token>`, and where the client stands in its streams
 * (`positions` query parameter or `stabilizer.pos.<positions>`).
 */
function resumeOffer (request: FastifyRequest): ResumeOffer {
  const query = request.query as Record<string, unknown> | undefined
  const header = request.headers['sec-websocket-protocol']
  const queryToken = typeof query?.token === 'string' ? query.token : undefined
  // Positions matter only with a token: without one there is nothing to read.
  if (header === undefined && queryToken === undefined) return noOffer
  const offer = readOffer(header)
  const positions = offer.positions ?? (typeof query?.positions === 'string' ? decodePositions(query.positions) : undefined)
  if (queryToken !== undefined) return { token: queryToken, inBand: false, positions }
  return { token: offer.offered ? offer.token : undefined, inBand: true, positions }
}

/** Whether a request was refused in-band (its handler must not run). */
export function refusedInBand (request: FastifyRequest): boolean {
  return (request.raw as AdmittedRequest)[kRefusal] !== undefined
}

export function createAdmissionHook (stabilizer: Stabilizer, options: ResolvedOptions, log: FastifyBaseLogger) {
  const { identify, enableReconnect } = options
  const allowedOrigins = options.allowedOrigins === undefined ? undefined : new Set(options.allowedOrigins)
  const perIpCap = options.maxConnectionsPerIp > 0
  const connectRate = options.connectRatePerIp > 0

  function refuseWhileDraining (reply: FastifyReply): FastifyReply {
    stabilizer.countRejection('shuttingDown')
    return reply.code(503).header('retry-after', retryAfterShutdownSeconds).send(new ShutdownError())
  }

  function releaseOnClose (this: AdmittedSocket): void {
    const admission = this[kAdmission]
    this[kAdmission] = undefined
    if (admission !== undefined && !admission.settled) {
      admission.settled = true
      admission.ticket.release()
      giveBack(admission.resume)
    }
  }

  /** A resume that never became a connection: its session goes back for the next attempt. */
  function giveBack (resume: ResumeRequest | undefined): void {
    if (resume?.record === undefined) return
    stabilizer.adapter.saveSession(resume.record).catch((err: unknown) => { log.warn({ err }, 'websocket session could not be given back') })
  }

  /**
   * The route's `preHandler`, callback style: an upgrade without `identify` or a token is
   * admitted synchronously, so the handshake runs in the same turn as in raw @fastify/websocket;
   * the rest takes the async path. A refusal sends its reply and does not call `done`.
   */
  function admitUpgrade (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): Promise<FastifyReply | undefined> | undefined {
    if (!request.ws) { // a plain HTTP GET on a websocket route: @fastify/websocket answers it
      done()
      return
    }
    if (stabilizer.state !== 'running') {
      refuseWhileDraining(reply)
      return
    }
    const origin = request.headers.origin
    if (allowedOrigins !== undefined && origin !== undefined && !allowedOrigins.has(origin)) {
      stabilizer.countRejection('origin')
      reply.code(403).send(new OriginNotAllowedError(JSON.stringify(origin)))
      return
    }
    // Read only when a per-IP limit needs it: it costs a system call (getpeername).
    const ip = perIpCap || connectRate ? request.ip : undefined
    if (connectRate) {
      const waitSeconds = stabilizer.perIp.takeConnect(ip!, performance.now())
      if (waitSeconds > 0) {
        stabilizer.countRejection('connectRate')
        reply.code(429).header('retry-after', waitSeconds).send(new TooManyConnectionsError(`Too many connection attempts from ${ip!}`))
        return
      }
    }
    const offer = enableReconnect ? resumeOffer(request) : undefined
    if (identify !== undefined || offer?.token !== undefined) return admitAsync(request, reply, ip, offer)
    const clientId = defaultIdentify(request)
    try {
      checkClientId(clientId)
    } catch (err) {
      stabilizer.countRejection('clientId')
      throw err
    }
    if (refuseOverLimits(reply, clientId, ip) !== undefined) return
    reserve(request, clientId, ip, undefined)
    done()
  }

  /** Admission with `identify` or a reconnect token: both may wait. */
  async function admitAsync (request: FastifyRequest, reply: FastifyReply, ip: string | undefined, offer: ResumeOffer | undefined): Promise<FastifyReply | undefined> {
    let clientId: string
    let claims: TokenClaims | undefined
    try {
      // A resume: the token is checked before anything else, and names the identity it resumes.
      if (offer?.token !== undefined) claims = stabilizer.tokens.verify(offer.token)
      clientId = identify === undefined ? defaultIdentify(request, claims?.cid) : await identify(request)
      checkClientId(clientId)
      if (claims !== undefined && claims.cid !== clientId) throw new InvalidTokenError('it was issued for another client')
    } catch (err) {
      stabilizer.countRejection(isTokenError(err) ? 'token' : err instanceof InvalidClientIdError ? 'clientId' : 'identity')
      if (claims !== undefined || (offer?.token !== undefined && isTokenError(err))) stabilizer.metrics?.resumeRejected()
      if (offer?.inBand === true && isTokenError(err)) return refuseInBand(request, err)
      throw err
    }
    const refused = refuseOverLimits(reply, clientId, ip)
    if (refused !== undefined) return refused
    // Redeemed last, once everything else admitted the upgrade (a token is valid once).
    if (claims !== undefined && !await stabilizer.tokens.redeem(claims)) {
      stabilizer.countRejection('token')
      stabilizer.metrics?.resumeRejected()
      const used = new InvalidTokenError('already used')
      if (offer?.inBand === true) return refuseInBand(request, used)
      throw used
    }
    const resume = claims === undefined ? undefined : { sessionId: claims.sid, positions: offer?.positions, record: await stabilizer.takeSession(claims) }
    reserve(request, clientId, ip, resume)
    return undefined
  }

  /** The checks made once the identity is known: shutdown, `maxConnections`, the per-IP cap. */
  function refuseOverLimits (reply: FastifyReply, clientId: string, ip: string | undefined): FastifyReply | undefined {
    if (stabilizer.state !== 'running') return refuseWhileDraining(reply)
    if (!stabilizer.hasRoomFor(clientId)) {
      stabilizer.countRejection('connectionLimit')
      return reply.code(503).header('retry-after', retryAfterLimitSeconds).send(new ConnectionLimitExceededError(options.maxConnections))
    }
    // A client coming back under its id replaces its old connection: never refused for its IP.
    if (perIpCap && !stabilizer.isConnected(clientId) && !stabilizer.perIp.hasRoom(ip!)) {
      stabilizer.countRejection('ipLimit')
      return reply.code(429).header('retry-after', retryAfterLimitSeconds).send(new TooManyConnectionsError(`Too many connections from ${ip!}`))
    }
    return undefined
  }

  /** Reserves the admitted upgrade's slot until the handshake completes or the socket closes. */
  function reserve (request: FastifyRequest, clientId: string, ip: string | undefined, resume: ResumeRequest | undefined): void {
    const socket = request.raw.socket as AdmittedSocket | undefined
    // The client left while identify() ran: ws will not upgrade a dead socket, and a close
    // listener added now would never fire, so reserve nothing.
    if (socket?.destroyed === true) {
      giveBack(resume)
      return
    }
    const ticket = stabilizer.admission.admit(perIpCap ? ip : undefined)
    const admission: Admission = { clientId, request, ticket, resume, settled: false }
    ;(request.raw as AdmittedRequest)[kAdmission] = admission
    if (socket !== undefined) {
      // If the handshake never completes, the slot comes back when the socket closes. A plain
      // listener, left in place once connected (it then finds nothing): `once` and its
      // removal cost more than the no-op call at close.
      socket[kAdmission] = admission
      socket.on('close', releaseOnClose)
    }
  }

  /** The 'connection' listener: turns an admitted upgrade into a registered connection. */
  function onConnection (socket: WebSocket, raw: IncomingMessage): boolean {
    const refusal = (raw as AdmittedRequest)[kRefusal]
    if (refusal !== undefined) {
      socket.close(CloseCode.RESUME_REJECTED, refusal.refused)
      return false
    }
    const admission = (raw as AdmittedRequest)[kAdmission]
    if (admission === undefined || admission.settled) return false
    admission.settled = true
    const rawSocket = raw.socket as AdmittedSocket | undefined
    if (rawSocket !== undefined) rawSocket[kAdmission] = undefined
    // Settled: the request no longer holds its admission (it lives as long as the socket).
    ;(raw as AdmittedRequest)[kAdmission] = undefined
    // The ticket passes to the connection, which releases it when it closes.
    const connection = stabilizer.attach(admission.clientId, socket, noMetadata, rawSocket === undefined ? undefined : admission.request.ip, admission.ticket, admission.resume)
    admission.request.wsConnection = connection
    return true
  }

  return Object.assign(admitUpgrade, { onConnection })
}

function isTokenError (err: unknown): err is Error {
  return err instanceof InvalidTokenError || err instanceof TokenExpiredError
}

function refuseInBand (request: FastifyRequest, err: Error): undefined {
  // The reason (a close reason holds at most 123 bytes) says which failure it was: expired, invalid, already used.
  ;(request.raw as AdmittedRequest)[kRefusal] = { refused: Buffer.from(err.message).subarray(0, 120).toString() }
  return undefined
}

type WebsocketHandler = (this: unknown, socket: WebSocket, request: FastifyRequest) => unknown

/**
 * The `onRoute` hook: adds admission to stabilized websocket routes and, when the stabilizer
 * owns `@fastify/websocket`, wraps every websocket handler so its failures close with 1011.
 */
export function createRouteHook (
  stabilizer: Stabilizer,
  admit: ReturnType<typeof createAdmissionHook>,
  wrapHandlers: boolean,
  log: FastifyBaseLogger
) {
  function onHandlerError (err: unknown, socket: WebSocket, request: FastifyRequest): void {
    log.error({ err, clientId: request.wsConnection?.id, route: request.routeOptions.url }, 'websocket route handler failed')
    const connection = request.wsConnection === null ? undefined : stabilizer.getConnection(request.wsConnection.id)
    if (connection !== undefined && connection === request.wsConnection) {
      stabilizer.closeConnection(connection as Parameters<Stabilizer['closeConnection']>[0], CloseCode.INTERNAL_ERROR, 'internal error', 'handler_error')
    } else if (socket.readyState === socket.OPEN) {
      socket.close(CloseCode.INTERNAL_ERROR, 'internal error')
    }
  }

  return function onRoute (route: RouteOptions & { websocket?: boolean }): void {
    if (route.websocket !== true) return
    const methods = Array.isArray(route.method) ? route.method : [route.method]
    if (methods.every((method) => method === 'HEAD')) return // never upgraded
    if ((route.config as { stabilizer?: boolean } | undefined)?.stabilizer !== false) {
      const existing = route.preHandler
      route.preHandler = existing === undefined ? [admit] : [...(Array.isArray(existing) ? existing : [existing]), admit]
    }
    if (!wrapHandlers) return
    const handler = route.handler as unknown as WebsocketHandler
    const wrapped: WebsocketHandler = function (socket, request) {
      if (refusedInBand(request)) return
      try {
        const result = handler.call(this, socket, request)
        if (result instanceof Promise) result.catch((err: unknown) => onHandlerError(err, socket, request))
      } catch (err) {
        onHandlerError(err, socket, request)
      }
    }
    route.handler = wrapped as unknown as RouteOptions['handler']
  }
}

/** Used when the app registered `@fastify/websocket` itself, whose default preClose closes every tracked client with no code (peers see 1005). */
export function shieldFromForeignPreClose (wss: WebSocketServer, socket: WebSocket): void {
  wss.clients.delete(socket)
}
