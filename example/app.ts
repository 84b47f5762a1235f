import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { readFile } from 'node:fs/promises'
import stabilizer, { type StabilizerOptions } from '../lib/index.js'
import { bundleClient } from './client-bundle.js'

const page = new URL('./public/index.html', import.meta.url)

/**
 * A small chat server: every message a client sends is broadcast to everyone as
 * `{ from, text, at }` (`at`: the server's time, ms); `/join <room>` and `/say <room> <text>`
 * use groups. The page at `/` talks to it through the client library (`/client.js`):
 * reconnect, resume with replay, offline queue. Give it `secrets` (example/chat.ts does), or
 * sessions cannot resume after a restart.
 */
export async function buildChatApp (options: StabilizerOptions = {}, fastifyOptions: FastifyServerOptions = { logger: true }): Promise<FastifyInstance> {
  // Client ids come from the path: let them be as long as the plugin allows (256).
  const app = Fastify({ ...fastifyOptions, routerOptions: { maxParamLength: 256, ...fastifyOptions.routerOptions } })
  await app.register(stabilizer, { shutdownTimeout: 5_000, ...options })

  app.get('/', async (_request, reply) => reply.type('text/html').send(await readFile(page)))
  const client = await bundleClient()
  app.get('/client.js', async (_request, reply) => reply.type('text/javascript').send(client))

  app.get<{ Params: { clientId: string } }>('/ws/:clientId', { websocket: true }, (socket, request) => {
    const from = request.params.clientId
    socket.on('message', (data, isBinary) => {
      if (isBinary) return
      const text = data.toString()
      const room = /^\/join (\S+)$/.exec(text)
      if (room !== null) {
        app.stabilizer.join(from, room[1])
        void app.stabilizer.sendToClient(from, { system: `joined ${room[1]}`, at: Date.now() })
        return
      }
      const say = /^\/say (\S+) (.+)$/.exec(text)
      if (say !== null) {
        void app.stabilizer.broadcast({ from, room: say[1], text: say[2], at: Date.now() }, { group: say[1] })
        return
      }
      void app.stabilizer.broadcast({ from, text, at: Date.now() })
    })
  })
  return app
}
