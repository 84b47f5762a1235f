import { buildChatApp } from './app.js'
import { loadSecrets } from './dev-secret.js'

const app = await buildChatApp({ secrets: await loadSecrets() })
const port = Number(process.env.PORT ?? 3000)
const host = process.env.HOST ?? '127.0.0.1'
await app.listen({ port, host })
const url = `http://${host}:${(app.server.address() as { port: number }).port}`
app.log.info({ url }, `chat page: ${url}/ (each tab is its own person; /?id=alice picks a name)  —  stats: ${url}/ws-stats`)

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    app.log.info({ signal }, 'shutting down')
    app.close().then(() => process.exit(0), (err: unknown) => {
      app.log.error({ err }, 'shutdown failed')
      process.exit(1)
    })
  })
}
