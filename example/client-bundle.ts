import { build } from 'esbuild'

/**
 * The client library (`lib/client/`) as one minified ES module, as a page loads it. The example
 * serves it at `/client.js`; test/client-size.test.ts measures it. In an app, import
 * `fastify-websocket-stabilizer/client` and let your bundler do this.
 */
export async function bundleClient (): Promise<string> {
  const result = await build({
    entryPoints: [new URL('../lib/client/index.ts', import.meta.url).pathname],
    bundle: true,
    format: 'esm',
    minify: true,
    target: 'es2020',
    write: false
  })
  return result.outputFiles[0].text
}
