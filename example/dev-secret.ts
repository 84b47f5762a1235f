import { randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'

/** Where the example keeps its development secret (git-ignored). */
export const devSecretFile = fileURLToPath(new URL('./.dev-secret', import.meta.url))

/**
 * The reconnect-token secrets of the example: `STABILIZER_SECRETS` (comma-separated, the first
 * signs) when set — as in production, where every instance gets the same list from its secret
 * store — else a development secret generated on first run and kept in example/.dev-secret, so
 * that sessions resume across restarts of the example.
 */
export async function loadSecrets (env: NodeJS.ProcessEnv = process.env, file = devSecretFile): Promise<string[]> {
  const fromEnv = env.STABILIZER_SECRETS?.split(',').map((secret) => secret.trim()).filter(Boolean)
  if (fromEnv !== undefined && fromEnv.length > 0) return fromEnv
  try {
    const kept = (await readFile(file, 'utf8')).trim()
    if (kept.length >= 32) return [kept]
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const secret = randomBytes(32).toString('base64url')
  await writeFile(file, secret + '\n', { mode: 0o600 })
  return [secret]
}
