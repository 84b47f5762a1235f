import t from 'tap'
import { gzipSync } from 'node:zlib'
import { bundleClient } from '../example/client-bundle.js'

void t.test('the client library is small: under 6 kB minified and gzipped, with no dependency', async (t) => {
  const bundle = await bundleClient()
  const gzipped = gzipSync(bundle, { level: 9 }).length
  t.ok(gzipped < 6 * 1024, `${bundle.length} bytes minified, ${gzipped} bytes gzipped`)
  t.notMatch(bundle, /\bimport\s*[{*\w]/, 'one self-contained module: it imports nothing')
  t.notMatch(bundle, /\brequire\(|node:/, 'nothing from Node')
  // lib/protocol.ts is shared with the server: what the client takes from it must not need Node's Buffer.
  t.notMatch(bundle, /\bBuffer\b/, 'no Buffer (ArrayBuffer is fine)')
})
