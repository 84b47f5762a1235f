import t from 'tap'
import * as api from '../lib/index.js'
import { errorCatalog } from '../lib/errors.js'

void t.test('every error is a WebSocketStabilizerError with an FST_WS_STABILIZER_ code', async (t) => {
  const codes = new Set<string>()
  for (const [name, ErrorClass] of Object.entries(errorCatalog)) {
    t.equal((api as Record<string, unknown>)[name], ErrorClass, `${name} is exported under its name`)
    const err = new ErrorClass('x', 1)
    t.ok(err instanceof api.WebSocketStabilizerError, `${name} extends the base`)
    t.ok(err instanceof Error)
    t.match(err.code, /^FST_WS_STABILIZER_[A-Z_]+$/)
    t.notOk(codes.has(err.code), `${err.code} is unique`)
    codes.add(err.code)
    t.type(err.statusCode, 'number')
  }
})

void t.test('errors that end a socket carry its close code', async (t) => {
  t.equal(new api.ConnectionLimitExceededError(10).closeCode, api.CloseCode.TRY_AGAIN_LATER)
  t.equal(new api.ShutdownError().closeCode, api.CloseCode.SERVICE_RESTART)
  t.equal(new api.ConnectionNotFoundError('a').closeCode, undefined)
  t.equal(new api.ConnectionLimitExceededError(10).message, 'Connection limit of 10 reached')
})

void t.test('close-code table follows the ranges', async (t) => {
  for (const row of api.closeCodeTable) {
    t.equal(api.shouldReconnect(row.code), row.reconnect, `${row.code} ${row.name}`)
    if (row.code >= 4000 && row.code < 4500) t.ok(row.reconnect, `${row.code} is in the reconnect range`)
    if (row.code >= 4500 && row.code < 5000) t.notOk(row.reconnect, `${row.code} is in the terminal range`)
  }
  t.ok(api.shouldReconnect(4123), 'unknown 4000–4499 reconnects')
  t.notOk(api.shouldReconnect(4777), 'unknown 4500–4999 does not')
  t.ok(api.shouldReconnect(1005), 'no status: transient')
  t.notOk(api.shouldReconnect(1008), 'policy violation: terminal')
  t.notOk(api.shouldReconnect(1003), 'unsupported data: terminal')
})
