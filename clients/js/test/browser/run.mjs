#!/usr/bin/env node
// tests/test_sync_client_browser.py drives this: headless Chromium (playwright-core, real
// IndexedDB) runs test/browser/dist (page.js), served by route from disk under the sync server's own
// origin (${server}/__client-test/: a loopback page may open sockets to a loopback server).
//   node test/browser/run.mjs '<{"server", "customer", "apiKey"}>'
// Steps: online first sync; offline (the network is gone: setOffline, sockets dropped) 5 edits;
// page reload while offline (IndexedDB gives them back, pending 5); another client edits online;
// back online: merged both ways. At the page's `durable` this script prints
// {"event": "durable"} and blocks (fs.readSync on stdin) until the test has looked at doc_updates.
// Last line: what the page logged.
import { readFileSync, readSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { join, extname } from 'node:path'
import { chromium } from 'playwright-core'
import WebSocket from 'ws'
import { connect, memoryStorage } from '@webhost/sync-client'

const cfg = JSON.parse(process.argv[2])
const DIST = fileURLToPath(new URL('./dist/', import.meta.url))
const out = (v) => process.stdout.write(JSON.stringify(v) + '\n')
const WAIT = 30000
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' }

async function token () {
  const res = await fetch(`${cfg.server}/api/v1/sync-tokens`, {
    method: 'POST',
    headers: { authorization: `Bearer ${cfg.apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ docs: ['notes'], ttl_seconds: 600 })
  })
  if (!res.ok) throw new Error(`sync-tokens ${res.status}`)
  return (await res.json()).token
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-features=LocalNetworkAccessChecks' // the page is fulfilled by route (no address of its own): let it reach the loopback server
  ]
})
const killer = setTimeout(() => { console.error('browser run timed out'); process.exit(3) }, 150000)
const errors = []
let durableSeen = 0
const consoleLines = []
let pageRef = null
try {
  const context = await browser.newContext()
  const page = await context.newPage()
  page.on('pageerror', (e) => errors.push(String(e)))
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`))
  pageRef = page
  await context.route(`${cfg.server}/__client-test/**`, (route) => {
    const path = new URL(route.request().url()).pathname.replace(/^\/__client-test\/+/, '') || 'index.html'
    route.fulfill({ body: readFileSync(join(DIST, path)), contentType: TYPES[extname(path)] || 'application/octet-stream' })
  })
  let offline = false
  await page.exposeFunction('getToken', async () => {
    if (offline) throw new Error('offline: no back end either')
    return token()
  })
  await page.exposeFunction('onDurable', (notes) => {
    if (!offline && durableSeen++ === 1) { // the first is the initial sync; the second the reconnect
      out({ event: 'durable', notes })
      readSync(0, Buffer.alloc(64))
    }
  })
  const url = `${cfg.server}/__client-test/index.html?server=${encodeURIComponent(cfg.server)}&customer=${encodeURIComponent(cfg.customer)}`
  await page.goto(url)
  await page.waitForFunction(() => window.harness && window.harness.session.status === 'durable', null, { timeout: WAIT })
  const firstSync = await page.evaluate(() => window.harness.state())

  // offline: the network goes, the sockets with it; edits stay on the device
  offline = true
  await context.setOffline(true)
  await page.evaluate(() => window.harness.reconnect()) // drop the socket; its retries now fail
  for (let i = 0; i < 5; i++) await page.evaluate((i) => window.harness.write(`offline-${i}`, `edit ${i}`), i)
  await page.waitForTimeout(300) // y-indexeddb writes
  const offlineState = await page.evaluate(() => window.harness.state())

  // reload while offline: IndexedDB gives the edits back, with their pending count
  await page.reload()
  await page.waitForFunction(() => window.harness, null, { timeout: WAIT })
  await page.evaluate(() => window.harness.loaded)
  const reloaded = await page.evaluate(() => window.harness.state())

  // meanwhile another device edits the same document online
  const other = connect({ url: cfg.server, customer: cfg.customer, getToken: token, storage: memoryStorage(), WebSocket })
  const otherNotes = other.open('notes')
  otherNotes.doc.getMap('notes').set('from-other-device', 'hello')
  await otherNotes.whenDurable()

  // back online: the page reconnects by itself ('online' event) and both sides merge
  offline = false
  await context.setOffline(false)
  await page.waitForFunction(() => window.harness.session.status === 'durable', null, { timeout: WAIT })
  const merged = await page.evaluate(() => window.harness.state())
  const deadline = Date.now() + WAIT
  while (Object.keys(otherNotes.doc.getMap('notes').toJSON()).length < 6 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
  const otherSees = otherNotes.doc.getMap('notes').toJSON()
  await other.close()
  out({ event: 'done', firstSync, offline: offlineState, reloaded, merged, otherSees, errors })
} catch (err) {
  const state = pageRef ? await pageRef.evaluate(() => window.harness && window.harness.state()).catch(() => null) : null
  console.error(JSON.stringify({ error: String(err), state, console: consoleLines.slice(-20), errors }))
  throw err
} finally {
  clearTimeout(killer)
  await browser.close()
}
process.exit(0)
