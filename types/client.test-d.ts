import { expectAssignable, expectError, expectNotAssignable, expectType } from 'tsd'
import { WebSocket, WebSocketServer } from 'ws'
import { StabilizedWebSocket, backoffDelay, type Positions, type SendResult, type StabilizedEvent, type WebSocketConstructor } from 'fastify-websocket-stabilizer/client'

// ws's class is a WebSocket implementation as it is: no cast (the newcomer issue).
const client = new StabilizedWebSocket('ws://127.0.0.1:3000/ws/alice', { WebSocket, maxDelay: 10_000, queueMaxMessages: 50 })
expectAssignable<WebSocketConstructor>(WebSocket)
// A subclass, as tests and apps write to add options, fits as well.
class WithOptions extends WebSocket {
  constructor (url: string, protocols?: string | string[]) {
    super(url, protocols, { handshakeTimeout: 5000 })
  }
}
expectAssignable<WebSocketConstructor>(WithOptions)
// And so is the browser's.
expectAssignable<WebSocketConstructor>(globalThis.WebSocket)
const inBrowser = new StabilizedWebSocket('wss://example.com/ws/alice', { WebSocket: globalThis.WebSocket })
expectType<StabilizedWebSocket>(inBrowser)

expectType<SendResult>(client.send('hello'))
expectType<SendResult>(client.send(new Uint8Array([1, 2])))
expectType<number>(client.readyState)
expectType<string | undefined>(client.clientId)
expectType<void>(client.close(1000, 'bye'))
expectType<Positions>(client.positions)
expectType<[epoch: string, seq: number]>(client.positions['*'])
client.onmessage = (event) => { expectType<StabilizedEvent>(event) }
client.onresumed = (event) => {
  expectAssignable<'full' | 'partial' | 'none' | undefined>(event.resume?.outcome)
  expectType<boolean | undefined>(event.resume?.historyLost)
}
expectType<number>(backoffDelay(3, { minDelay: 100 }))

// Must not compile.
expectError(client.send(42))
expectError(new StabilizedWebSocket('ws://x', { maxRetries: 'many' }))
expectError(client.positions = {})
expectError(client.lastSeq)
expectError(new StabilizedWebSocket('ws://x', { ackEvery: 10 }))
// The server class is not a WebSocket, though it comes from the same import.
expectNotAssignable<WebSocketConstructor>(WebSocketServer)
expectError(new StabilizedWebSocket('ws://x', { WebSocket: WebSocketServer }))
// Nor is a class whose send cannot take text.
class BytesOnly extends WebSocket {
  override send (data: number): void { super.send(String(data)) }
}
expectNotAssignable<WebSocketConstructor>(BytesOnly)
