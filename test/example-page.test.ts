import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdtemp } from 'node:fs/promises'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Browser, Page } from 'playwright-core'
import { launchChromium, silenceableProxy, startServer, stopGracefully, until } from './fixtures/example-server.js'
import { killProcess } from './fixtures/processes.js'
import { requirePrerequisites } from './fixtures/requires.js'

// What the example page tells the person using it, checked by the text it shows (visible in the
// rendered page, as a screenshot would show it), never by pixels. Each scenario also saves a
// screenshot for a human to look at; its path is printed.

const shots = await mkdtemp(join(tmpdir(), 'example-page-'))

/** Waits until `text` is visible on the page, then saves a screenshot named `name`. */
async function shows (t: { ok: (value: boolean, message: string) => unknown }, page: Page, text: string | RegExp, name: string, timeout = 15_000): Promise<void> {
  const visible = await page.getByText(text).first().waitFor({ state: 'visible', timeout }).then(() => true, () => false)
  const path = join(shots, `${name}.png`)
  await page.screenshot({ path })
  t.ok(visible, `the page shows ${String(text)} (screenshot: ${path})`)
}

const statusOf = async (page: Page): Promise<string> => await page.locator('#status').innerText()

if (await requirePrerequisites(t, 'chromium') === false) {
  let browser: Browser
  t.before(async () => { browser = await launchChromium() })
  t.teardown(async () => await browser.close())

  void t.test('the example command (example/chat.ts) serves the page, which connects', async (t) => {
    // As `npm run example` runs it, on a free port, with its secret from the environment.
    const chat = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('../example/chat.ts', import.meta.url))], {
      env: { ...process.env, PORT: '0', STABILIZER_SECRETS: 'example-page-test-secret-of-32-bytes-at-least' },
      stdio: ['ignore', 'pipe', 'inherit']
    })
    t.teardown(async () => await killProcess(chat))
    let url: string | undefined
    for await (const line of createInterface({ input: chat.stdout })) {
      url = (JSON.parse(line) as { url?: string }).url
      if (url !== undefined) break
    }
    t.ok(url, `the example logs its page's URL (${String(url)})`)
    const page = await browser.newPage()
    await page.goto(`${url!}/`)
    await shows(t, page, /^connected as guest-/, 'example-command')
    await page.close()
  })

  void t.test('two tabs without ?id= are two people; each sees its own messages marked, with times', async (t) => {
    const server = await startServer({ TICK_MS: '60000' })
    t.teardown(async () => await killProcess(server.child))
    const context = await browser.newContext()
    t.teardown(async () => await context.close())
    const [a, b] = [await context.newPage(), await context.newPage()]
    for (const page of [a, b]) await page.goto(`http://127.0.0.1:${server.port}/`)
    await until(async () => (await statusOf(a)).startsWith('connected') && (await statusOf(b)).startsWith('connected'))
    const idA = await a.locator('#who').innerText()
    const idB = await b.locator('#who').innerText()
    t.not(idA, idB, `distinct ids per tab (${idA}, ${idB})`)
    await a.locator('#text').fill('hello from a')
    await a.locator('#text').press('Enter')
    await shows(t, a, 'you: hello from a', 'own-message')
    await shows(t, b, `${idA}: hello from a`, 'other-message')
    t.match(await b.locator('.line.message time').first().innerText(), /\d{1,2}:\d{2}:\d{2}/, 'the message shows its time')
    t.equal(await a.locator('.line.own').count(), 1, 'marked as one\'s own in the sender\'s tab only')
    t.equal(await b.locator('.line.own').count(), 0)
    await a.reload()
    await until(async () => (await statusOf(a)).startsWith('connected'))
    t.equal(await a.locator('#who').innerText(), idA, 'a reload keeps the tab\'s name')
  })

  void t.test('the same ?id= in a second tab: the first says so in words and offers to take over', async (t) => {
    const server = await startServer({ TICK_MS: '60000' })
    t.teardown(async () => await killProcess(server.child))
    const first = await browser.newPage()
    await first.goto(`http://127.0.0.1:${server.port}/?id=zoe`)
    await until(async () => (await statusOf(first)).startsWith('connected'))
    const second = await browser.newPage()
    await second.goto(`http://127.0.0.1:${server.port}/?id=zoe`)
    await shows(t, first, 'This chat is open as zoe in another tab or window.', 'replaced')
    await shows(t, first, 'Use this tab instead', 'take-over-offered')
    t.match(await statusOf(first), /open in another tab/)
    await first.getByText('Use this tab instead').click()
    await until(async () => (await statusOf(first)).startsWith('connected'))
    await shows(t, second, 'This chat is open as zoe in another tab or window.', 'taken-over')
    t.equal(await first.locator('#notice').isVisible(), false, 'the tab that took over shows no notice')
    await first.close()
    await second.close()
  })

  void t.test('a graceful restart: the page says the server restarted and that messages may be missing', async (t) => {
    const first = await startServer({ RUN: '1' })
    t.teardown(async () => await killProcess(first.child))
    const page = await browser.newPage()
    await page.goto(`http://127.0.0.1:${first.port}/?id=ron`)
    await until(async () => (await statusOf(page)).startsWith('connected'))
    await stopGracefully(first)
    await shows(t, page, 'The server is restarting. Reconnecting…', 'restarting')
    const second = await startServer({ RUN: '2', PORT: String(first.port) })
    t.teardown(async () => await killProcess(second.child))
    // One process, memory adapter: the new process does not have the session.
    await shows(t, page, /the server no longer had your session .* messages sent while you were away may be missing/, 'restarted')
    await until(async () => (await statusOf(page)).startsWith('connected'))
    await page.close()
  })

  void t.test('a drop longer than the replay log: the page says how many messages could not be delivered', async (t) => {
    // A tick every 20 ms, at most 5 kept per session: a path silent for over a second loses some.
    const server = await startServer({ RUN: '1', HEARTBEAT_INTERVAL: '1000', HEARTBEAT_TIMEOUT: '500', REPLAY_BUFFER_SIZE: '5' })
    t.teardown(async () => await killProcess(server.child))
    const proxy = await silenceableProxy(server.port)
    t.teardown(proxy.close)
    const page = await browser.newPage()
    await page.goto(`http://127.0.0.1:${proxy.port}/?id=max`)
    await until(async () => (await statusOf(page)).startsWith('connected'))
    proxy.silence()
    await shows(t, page, 'The server stopped answering. Reconnecting…', 'silent-path')
    await shows(t, page, /Reconnected: (\d+ messages|some messages) sent while you were away could not be delivered/, 'partial')
    await page.close()
  })
}
