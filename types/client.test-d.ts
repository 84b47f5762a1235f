import { expectAssignable, expectError, expectType } from 'tsd'
import { WebSocket } from 'ws'
import { StabilizedWebSocket, backoffDelay, type SendResult, type StabilizedEvent, type WebSocketConstructor } from 'fastify-websocket-stabilizer/client'

const client = new StabilizedWebSocket('ws://127.0.0.1:3000/ws/alice', { WebSocket: WebSocket as unknown as WebSocketConstructor, maxDelay: 10_000, queueMaxMessages: 50 })
expectType<SendResult>(client.send('hello'))
expectType<SendResult>(client.send(new Uint8Array([1, 2])))
expectType<number>(client.readyState)
expectType<string | undefined>(client.clientId)
expectType<void>(client.close(1000, 'bye'))
client.onmessage = (event) => { expectType<StabilizedEvent>(event) }
client.onresumed = (event) => { expectAssignable<'full' | 'partial' | 'none' | undefined>(event.resume?.outcome) }
expectType<number>(backoffDelay(3, { minDelay: 100 }))
expectError(client.send(42))
expectError(new StabilizedWebSocket('ws://x', { maxRetries: 'many' }))
