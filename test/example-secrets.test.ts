import t from 'tap'
import { mkdtemp, readFile, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadSecrets } from '../example/dev-secret.js'
import { resolveOptions } from '../lib/options.js'

void t.test('the example\'s secrets: from STABILIZER_SECRETS when set, else a generated dev secret kept across runs', async (t) => {
  const file = join(await mkdtemp(join(tmpdir(), 'dev-secret-')), '.dev-secret')
  const first = await loadSecrets({}, file)
  t.equal(first.length, 1)
  t.ok(Buffer.byteLength(first[0]) >= 32, 'long enough for the plugin')
  t.equal(resolveOptions({ secrets: first }).secrets, first, 'accepted by the plugin')
  t.equal((await readFile(file, 'utf8')).trim(), first[0], 'kept in the file')
  t.equal((await stat(file)).mode & 0o777, 0o600, 'readable by its owner only')
  t.same(await loadSecrets({}, file), first, 'the same on the next run: sessions resume across restarts')
  t.same(await loadSecrets({ STABILIZER_SECRETS: ' new-key-of-at-least-32-bytes-000000 , old-key-of-at-least-32-bytes-000000 ' }, file), ['new-key-of-at-least-32-bytes-000000', 'old-key-of-at-least-32-bytes-000000'], 'the environment wins, in order (the first signs)')
})
