import t from 'tap'
import { reconnectStorm } from './fixtures/reconnect-storm.js'

// The client library's reconnect storm: 5 000 clients in a child process, their server
// restarted gracefully (default options; the replacement pre-started, taking the port the old
// one releases at the start of its drain). Timing is measured in bench/reconnect-storm.ts,
// not asserted here: this asserts that everyone is back and nobody failed on the way.
void t.test('5 000 clients are all back after a graceful restart, with no failed handshake', async (t) => {
  const clients = 5000
  const result = await reconnectStorm(clients, { secrets: ['reconnect-storm-test-secret-of-at-least-32-bytes'] })
  t.equal(result.restartCloses, clients, 'every client was told 1012')
  t.equal(result.reconnected, clients, 'every client is open again')
  t.same(result.failures, {}, 'no attempt closed before it opened')
  t.equal(result.refusedByOldServer, 0, 'the draining server refused no upgrade')
  t.equal(result.refusedByReplacement, 0, 'the replacement refused no upgrade')
  t.same(result.outcomes, { partial: clients }, 'each kept its identity and was told its history was lost (the replacement holds no state)')
  t.ok(result.hints.min >= 250 && result.hints.max <= 3000, `hints within the defaults' [250, 3000] ms: ${result.hints.min}–${result.hints.max}`)
  t.comment(`back ${result.arrivals[0]}–${result.arrivals.at(-1)} ms after SIGTERM; drain ${result.drainMs} ms; busiest 100 ms window ${Math.max(...result.perWindow)} clients`)
})
