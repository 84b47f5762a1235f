/** Mass operations spread over event-loop turns. */
import { setImmediate as nextTurn } from 'node:timers/promises'

/**
 * Runs `step` over `items`, yielding to the event loop after every `perTurn` steps that did
 * work (`step` returns true). Mass operations — shutdown closes, evictions — use it so that
 * thousands of sockets never block the loop in one piece.
 */
export async function paced<T> (items: Iterable<T>, perTurn: number, step: (item: T) => boolean): Promise<void> {
  let inTurn = 0
  for (const item of items) {
    if (inTurn === perTurn) {
      inTurn = 0
      await nextTurn()
    }
    if (step(item)) inTurn++
  }
}
