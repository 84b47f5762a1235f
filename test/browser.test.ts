import t from 'tap'
import { type Browser, type Page } from 'playwright-core'
import { launchChromium, silenceableProxy, startServer, stopGracefully, until } from './fixtures/example-server.js'
import { killProcess } from './fixtures/processes.js'
import { requirePrerequisites } from './fixtures/requires.js'

// The example's page, in headless Chromium, against the example app in its own process.

interface Tick { type: 'tick', run: string, n: number }
interface PageEvent { type: string, code?: number, reason?: string, outcome?: string, stateRestored?: boolean, historyLost?: boolean, at: number }

const ticksOf = async (page: Page): Promise<Tick[]> => (await page.evaluate('window.chatLog') as string[]).map((data) => JSON.parse(data) as Tick).filter((m) => m.type === 'tick')
const eventsOf = async (page: Page): Promise<PageEvent[]> => await page.evaluate('window.chatEvents') as PageEvent[]

// Fails at once, saying how to install it, when Chromium does not run here.
if (await requirePrerequisites(t, 'chromium') === false) {
  let browser: Browser
  t.before(async () => {
    browser = await launchChromium()
  })
  t.teardown(async () => await browser.close())

  void t.test('(a) a graceful restart (1012): the page reconnects and resumes; nothing lost, nothing twice', async (t) => {
    const first = await startServer({ RUN: '1' })
    t.teardown(async () => await killProcess(first.child))
    const page = await browser.newPage()
    await page.goto(`http://127.0.0.1:${first.port}/?id=ada`)
    await until(async () => (await ticksOf(page)).length >= 20)
    const sent = await stopGracefully(first)
    const second = await startServer({ RUN: '2', PORT: String(first.port) })
    t.teardown(async () => await killProcess(second.child))
    await until(async () => (await ticksOf(page)).filter((m) => m.run === '2').length >= 20)
    const ticks = await ticksOf(page)
    const run1 = ticks.filter((m) => m.run === '1').map((m) => m.n)
    const run2 = ticks.filter((m) => m.run === '2').map((m) => m.n)
    t.same(run1, Array.from({ length: run1.length }, (_, i) => run1[0] + i), 'run 1: in order, no gap, no duplicate')
    t.equal(run1[run1.length - 1], sent - 1, `every tick the first server sent after the page connected arrived (${sent} sent)`)
    t.same(run2, Array.from({ length: run2.length }, (_, i) => run2[0] + i), 'run 2: in order, no gap, no duplicate')
    const events = await eventsOf(page)
    t.match(events.find((e) => e.type === 'close'), { code: 1012 }, 'told the server was restarting')
    // The in-process adapter keeps nothing across a restart: the page offered positions of streams
    // whose history is gone, and is told so (PROTOCOL.md §3, resume).
    t.match(events.find((e) => e.type === 'resumed'), { outcome: 'partial', stateRestored: false, historyLost: true }, 'the identity resumed on the new process; the state and history loss are reported')
    t.match(await page.evaluate('window.chat.positions'), { '*': [String, Number] }, 'the page follows the broadcast stream of the new process')
    t.ok(await page.evaluate('window.chat.clientId === "ada"'))
    await page.close()
  })

  void t.test('(b) the server is SIGKILLed and restarted: the page notices and reconnects', async (t) => {
    const first = await startServer({ RUN: '1' })
    const page = await browser.newPage()
    await page.goto(`http://127.0.0.1:${first.port}/?id=bea`)
    await until(async () => (await ticksOf(page)).length >= 10)
    await killProcess(first.child)
    await until(async () => (await eventsOf(page)).some((e) => e.type === 'close'))
    const second = await startServer({ RUN: '2', PORT: String(first.port) })
    t.teardown(async () => await killProcess(second.child))
    await until(async () => (await ticksOf(page)).some((m) => m.run === '2'), 40_000)
    const events = await eventsOf(page)
    t.match(events.find((e) => e.type === 'close'), { code: 1006 }, 'the abrupt end is seen as 1006')
    t.equal(events.filter((e) => e.type === 'open').length, 2, 'open again on the restarted server')
    await page.close()
  })

  void t.test('(c) the path goes silent (a proxy stops forwarding): the watchdog drops it within interval + timeout, plus two of its checks', async (t) => {
    const interval = 1000
    const timeout = 500
    const server = await startServer({ RUN: '1', HEARTBEAT_INTERVAL: String(interval), HEARTBEAT_TIMEOUT: String(timeout) })
    t.teardown(async () => await killProcess(server.child))
    const proxy = await silenceableProxy(server.port)
    t.teardown(proxy.close)
    const page = await browser.newPage()
    await page.goto(`http://127.0.0.1:${proxy.port}/?id=cal`)
    await until(async () => (await ticksOf(page)).length >= 10)
    const silencedAt = Date.now()
    proxy.silence()
    await until(async () => (await eventsOf(page)).some((e) => e.type === 'close'))
    const close = (await eventsOf(page)).find((e) => e.type === 'close')!
    const detectedAfter = close.at - silencedAt
    t.match(close, { code: 4000, reason: 'no heartbeat' })
    // The watchdog checks every (interval + timeout) / 10 and confirms once: two checks of slack.
    t.ok(detectedAfter <= interval + timeout + 2 * (interval + timeout) / 10 + 100, `detected ${detectedAfter} ms after the path went silent (interval + timeout = ${interval + timeout} ms)`)
    await until(async () => (await eventsOf(page)).filter((e) => e.type === 'open').length === 2)
    const before = (await ticksOf(page)).length
    await until(async () => (await ticksOf(page)).length > before + 5)
    t.pass('reconnected through a fresh path and receiving again')
    await page.close()
  })

  void t.test('(d) offline: the page waits for the network instead of burning attempts, and reconnects when it is back', async (t) => {
    // A short heartbeat: whether Chromium's offline mode lets the 1012 through or swallows it,
    // the page learns the socket is gone within interval + timeout.
    const heartbeat = { HEARTBEAT_INTERVAL: '1000', HEARTBEAT_TIMEOUT: '500' }
    const first = await startServer({ RUN: '1', ...heartbeat })
    t.teardown(async () => await killProcess(first.child))
    const context = await browser.newContext()
    t.teardown(async () => await context.close())
    const page = await context.newPage()
    await page.goto(`http://127.0.0.1:${first.port}/?id=dot`)
    await until(async () => (await ticksOf(page)).length >= 5)
    await context.setOffline(true)
    t.equal(await page.evaluate('navigator.onLine'), false, 'the browser is offline')
    // The server restarts while the browser is offline: the hint (≤ 550 ms here) runs out offline.
    await stopGracefully(first)
    const second = await startServer({ RUN: '2', PORT: String(first.port), ...heartbeat })
    t.teardown(async () => await killProcess(second.child))
    await until(async () => (await eventsOf(page)).some((e) => e.type === 'close'))
    t.comment(`the page saw ${JSON.stringify((await eventsOf(page)).find((e) => e.type === 'close'))}`)
    await new Promise((resolve) => setTimeout(resolve, 2000))
    const offline = await eventsOf(page)
    t.equal(offline.filter((e) => e.type === 'close').length, 1, 'no attempt failed while offline: it waited')
    t.equal(offline.filter((e) => e.type === 'open').length, 1, 'not reconnected while offline')
    const stats = async (): Promise<{ totalConnections: number }> => await (await fetch(`http://127.0.0.1:${second.port}/ws-stats`)).json() as { totalConnections: number }
    t.equal((await stats()).totalConnections, 0, 'the new server saw no attempt')
    await context.setOffline(false)
    await until(async () => (await ticksOf(page)).some((m) => m.run === '2'))
    const events = await eventsOf(page)
    t.equal(events.filter((e) => e.type === 'open').length, 2, 'open again once online')
    t.equal(events.filter((e) => e.type === 'close').length, 1, 'with no failed attempt on the way')
    t.equal((await stats()).totalConnections, 1, 'one connection reached the new server')
  })
}
