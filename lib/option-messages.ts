// What an invalid option's error says: the values a union allows, the option name a typo was
// probably meant to be, and the minimum of a time. Used by options.ts only.
import type { TSchema } from '@sinclair/typebox'

/** The values a union schema accepts, as they would be written in code (`'drop'`, `1012`, `false`, "a path starting with /"). */
export function allowedValues (schema: TSchema): string[] | undefined {
  const members = (schema as { anyOf?: TSchema[] }).anyOf
  if (members === undefined) return undefined
  return members.map((member) => {
    if ('const' in member) return typeof member.const === 'string' ? `'${member.const}'` : String(member.const)
    if (member.type === 'string' && member.pattern === '^/') return 'a path starting with /'
    return String(member.type)
  })
}

/** Edit distance (insertions, deletions, substitutions; a swap of neighbours counts one). */
function distance (a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)])
  for (let j = 1; j <= b.length; j++) rows[0][j] = j
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      rows[i][j] = Math.min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) rows[i][j] = Math.min(rows[i][j], rows[i - 2][j - 2] + 1)
    }
  }
  return rows[a.length][b.length]
}

/**
 * The known name closest to `name` (case aside), when it is close enough to be a typo: at
 * most a third of the name's length away, or one differing only in case.
 */
export function nearestName (name: string, known: Iterable<string>): string | undefined {
  let best: string | undefined
  let bestDistance = Infinity
  for (const candidate of known) {
    const d = distance(name.toLowerCase(), candidate.toLowerCase())
    if (d < bestDistance) {
      best = candidate
      bestDistance = d
    }
  }
  return bestDistance <= Math.max(1, Math.floor(name.length / 3)) ? best : undefined
}

/**
 * Least values of the times that have one, in ms. Below them a timer would fire faster than
 * the scheduler's tick (5 ms) can judge, or a close handshake could never complete over a
 * real network; 0 keeps its documented meaning where it has one.
 */
export const timeMinimums = {
  /** 0 turns heartbeats off. */
  heartbeatInterval: { minimum: 100, zeroAllowed: true },
  /** 0 keeps pinging but never terminates. */
  heartbeatTimeout: { minimum: 50, zeroAllowed: true },
  closeTimeout: { minimum: 100, zeroAllowed: false }
} as const

/** Why `value` is below the minimum of the time option `name`, or undefined when it is not. */
export function belowMinimum (name: keyof typeof timeMinimums, value: number | undefined): string | undefined {
  if (value === undefined) return undefined
  const { minimum, zeroAllowed } = timeMinimums[name]
  if (value >= minimum || (zeroAllowed && value === 0)) return undefined
  return `${value} ms is below the minimum of ${minimum} ms${zeroAllowed ? ' (or 0)' : ''}`
}
