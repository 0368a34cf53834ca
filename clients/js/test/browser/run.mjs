#!/usr/bin/env node
// tests/test_sync_client_browser.py drives this: a real browser with real IndexedDB runs
// test/browser/dist (page.js) from disk: a small HTTP server on 127.0.0.1 (Firefox), the same files
// by route (Chromium: they load while the network is off).
//   node test/browser/run.mjs '<{"server", "customer", "apiKey", "browser": "chromium" | "firefox"}>'
// chromium: playwright-core and /usr/bin/chromium, the network really goes (setOffline: sockets and
// the page's own reconnection attempts fail); firefox: puppeteer-core over WebDriver BiDi and
// /usr/bin/firefox-esr, without network emulation: the page goes offline itself (session.disconnect,
// and a reload with ?offline=1).
// Steps: online first sync; offline 5 edits; page reload while offline (IndexedDB gives them back,
// pending 5); another client edits online; back online: merged both ways. At the page's `durable`
// the page asks /checkpoint synchronously; this script prints {"event": "durable"} and blocks
// until the test has looked at doc_updates, the page frozen meanwhile. Last line: what it logged.
import { createServer } from 'node:http'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { join, extname, normalize } from 'node:path'
import WebSocket from 'ws'
import { blockUntilGo } from '../checkpoint.mjs'
import { connect, memoryStorage } from '@webhost/sync-client'

const cfg = JSON.parse(process.argv[2])
const DIST = fileURLToPath(new URL('./dist/', import.meta.url))
const out = (v) => process.stdout.write(JSON.stringify(v) + '\n')
const WAIT = 30000
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' }
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function token () {
  const res = await fetch(`${cfg.server}/api/v1/sync-tokens`, {
    method: 'POST',
    headers: { authorization: `Bearer ${cfg.apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ docs: ['notes'], ttl_seconds: 600 })
  })
  if (!res.ok) throw new Error(`sync-tokens ${res.status}`)
  return (await res.json()).token
}

// POST /checkpoint: the page's durable event (it waits for the answer); after the reconnect the
// driver prints {"event": "durable"} and blocks until the test has looked
function checkpoint (body) {
  if (!reconnecting) return
  reconnecting = false
  out({ event: 'durable', notes: JSON.parse(body) })
  blockUntilGo()
}

const files = createServer(async (req, res) => {
  if (req.url === '/checkpoint') {
    let body = ''
    for await (const chunk of req) body += chunk
    checkpoint(body)
    return res.writeHead(204).end()
  }
  const path = normalize(new URL(req.url, 'http://x').pathname).replace(/^\/+/, '') || 'index.html'
  try {
    const body = await readFile(join(DIST, path))
    res.writeHead(200, { 'content-type': TYPES[extname(path)] || 'application/octet-stream' }).end(body)
  } catch {
    res.writeHead(404).end()
  }
})
await new Promise((resolve) => files.listen(0, '127.0.0.1', resolve))
const origin = `http://127.0.0.1:${files.address().port}`
let reconnecting = false

// the two drivers behind one small interface
async function chromium () {
  const { chromium } = await import('playwright-core')
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-features=LocalNetworkAccessChecks'] // a page fulfilled by route has no address of its own: let it reach the loopback server
  })
  const context = await browser.newContext()
  // the page's files come from disk even offline (as an app shell cached by a service worker would)
  await context.route(`${origin}/**`, async (route) => {
    if (route.request().url() === `${origin}/checkpoint`) {
      checkpoint(route.request().postData())
      return route.fulfill({ status: 204, body: '' })
    }
    const path = normalize(new URL(route.request().url()).pathname).replace(/^\/+/, '') || 'index.html'
    try {
      route.fulfill({ body: await readFile(join(DIST, path)), contentType: TYPES[extname(path)] || 'application/octet-stream' })
    } catch {
      route.fulfill({ status: 404, body: '' })
    }
  })
  const page = await context.newPage()
  return {
    page,
    browser,
    expose: (name, fn) => page.exposeFunction(name, fn),
    evaluate: (fn, arg) => page.evaluate(fn, arg),
    waitFor: (fn) => page.waitForFunction(fn, null, { timeout: WAIT }),
    goOffline: async () => { await context.setOffline(true); await page.evaluate(() => window.harness.reconnect()) },
    goOnline: () => context.setOffline(false), // the page reconnects by itself ('online' event)
    reloadOffline: () => page.reload(),
    goto: (url) => page.goto(url)
  }
}

async function firefox () {
  const puppeteer = (await import('puppeteer-core')).default
  const browser = await puppeteer.launch({
    browser: 'firefox', executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr', headless: true
  })
  const page = await browser.newPage()
  return {
    page,
    browser,
    expose: (name, fn) => page.exposeFunction(name, fn),
    evaluate: (fn, arg) => page.evaluate(fn, arg),
    waitFor: (fn) => page.waitForFunction(fn, { timeout: WAIT, polling: 50 }),
    goOffline: () => page.evaluate(() => window.harness.offline()),
    goOnline: () => page.evaluate(() => window.harness.online()),
    reloadOffline: () => page.goto(`${page.url().replace(/&offline=1$/, '')}&offline=1`),
    goto: (url) => page.goto(url)
  }
}

const killer = setTimeout(() => { console.error('browser run timed out'); process.exit(3) }, 150000)
const errors = []
const consoleLines = []
const b = await (cfg.browser === 'firefox' ? firefox() : chromium())
try {
  b.page.on('pageerror', (e) => errors.push(String(e)))
  b.page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`))
  let offline = false
  await b.expose('getToken', async () => {
    if (offline) throw new Error('offline: no back end either')
    return token()
  })
  await b.goto(`${origin}/index.html?server=${encodeURIComponent(cfg.server)}&customer=${encodeURIComponent(cfg.customer)}`)
  await b.waitFor(() => window.harness && window.harness.session.status === 'durable')
  const firstSync = await b.evaluate(() => window.harness.state())

  // offline: edits stay on the device
  offline = true
  await b.goOffline()
  for (let i = 0; i < 5; i++) await b.evaluate((i) => window.harness.write(`offline-${i}`, `edit ${i}`), i)
  await sleep(300) // y-indexeddb writes
  const offlineState = await b.evaluate(() => window.harness.state())

  // reload while offline: IndexedDB gives the edits back, with their pending count
  await b.reloadOffline()
  await b.waitFor(() => window.harness)
  await b.evaluate(() => window.harness.loaded)
  const reloaded = await b.evaluate(() => window.harness.state())

  // meanwhile another device edits the same document online
  const other = connect({ url: cfg.server, customer: cfg.customer, getToken: token, storage: memoryStorage(), WebSocket })
  const otherNotes = other.open('notes')
  otherNotes.doc.getMap('notes').set('from-other-device', 'hello')
  await otherNotes.whenDurable()

  // back online: both sides merge
  offline = false
  reconnecting = true
  await b.goOnline()
  await b.waitFor(() => window.harness.session.status === 'durable')
  const merged = await b.evaluate(() => window.harness.state())
  const deadline = Date.now() + WAIT
  while (Object.keys(otherNotes.doc.getMap('notes').toJSON()).length < 6 && Date.now() < deadline) await sleep(50)
  const otherSees = otherNotes.doc.getMap('notes').toJSON()
  await other.close()
  out({ event: 'done', browser: cfg.browser || 'chromium', firstSync, offline: offlineState, reloaded, merged, otherSees, errors })
} catch (err) {
  const state = await b.evaluate(() => window.harness && window.harness.state()).catch(() => null)
  console.error(JSON.stringify({ error: String(err), state, console: consoleLines.slice(-20), errors }))
  throw err
} finally {
  clearTimeout(killer)
  await b.browser.close()
  files.close()
}
process.exit(0)
