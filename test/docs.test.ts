import t from 'tap'
import { readFile } from 'node:fs/promises'
import { closeCodeTable, optionDefaults, OptionsSchema } from '../lib/index.js'
import { errorCatalog } from '../lib/errors.js'

const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')

/** The README's table rows, as arrays of cell texts. */
const rows = readme.split('\n').filter((line) => line.startsWith('|')).map((line) => line.split('|').slice(1, -1).map((cell) => cell.trim()))

void t.test('every error code is documented with its class name', async (t) => {
  for (const [name, ErrorClass] of Object.entries(errorCatalog)) {
    const code = new ErrorClass('x', 1).code
    t.ok(rows.some((row) => row.some((cell) => cell.includes(code)) && row.some((cell) => cell.includes(name))), `${name} ${code}`)
  }
})

void t.test('every close code is documented in the close-code table', async (t) => {
  for (const { code, name } of closeCodeTable) {
    t.ok(rows.some((row) => row[0] === `${code}` && row[1].includes(name)), `${code} ${name}`)
  }
})

void t.test('every option is documented with its default', async (t) => {
  for (const name of Object.keys(OptionsSchema.properties)) {
    const row = rows.find((cells) => cells[0] === `\`${name}\``)
    t.ok(row, `${name} has a row`)
    const fallback = (optionDefaults as Record<string, unknown>)[name]
    const documented = fallback === undefined ? '—' : `\`${String(fallback)}\``
    // Numbers may be written with digit separators (10_000) and followed by a short note.
    t.equal(row?.[1].replace(/(\d)_(\d)/g, '$1$2').replace(/ \(.*\)$/, ''), documented, `${name} default`)
  }
})

void t.test('every metrics series is documented with its type, and nothing else is', async (t) => {
  const Fastify = (await import('fastify')).default
  const stabilizer = (await import('../lib/index.js')).default
  const app = Fastify()
  t.teardown(async () => await app.close())
  await app.register(stabilizer, { metrics: { groups: ['room'] } })
  await app.ready()
  const scrape = (await app.inject('/metrics')).body
  const prefix = 'websocket_stabilizer_'
  const exported = new Map([...scrape.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map(([, name, type]) => [name.slice(prefix.length), type]))
  const documented = new Map(rows.filter((row) => row.length === 4 && /^`[a-z_]+`$/.test(row[0]) && ['counter', 'gauge', 'histogram'].includes(row[1])).map((row) => [row[0].slice(1, -1), row[1]]))
  for (const [name, type] of exported) t.equal(documented.get(name), type, `${name} (${type}) is in the README's series table`)
  // The adapter's connected gauge has no sample with the in-process adapter; every other row is exported.
  for (const name of documented.keys()) if (name !== 'adapter_connected') t.ok(exported.has(name), `${name} is exported`)
})
