// The dispatcher app with N vehicles moving once a second (bench/webapp_fleet.py runs it).
// One signed-in page in headless Chromium; a Node writer (yjs + y-websocket) plays the tracking
// pipeline: every second it moves every vehicle in the fleet document's `live` map in one update
// (each entry carries `sent`, the writer's clock; same machine). In the page: frames per second
// (requestAnimationFrame) and update latency (the writer's send -> the second frame after the page
// saw the update: rendered and painted). Phase "idle" (no vehicles) is the reference in the same run.
//   node bench/fleet.mjs --config cfg.json   -> one JSON line
import { readFileSync } from 'node:fs'
import { chromium } from 'playwright-core'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]])
  return acc
}, []))
const cfg = JSON.parse(readFileSync(args.config, 'utf8'))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync']
})
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } })
await page.goto(`${cfg.base}/app/`)
await page.waitForSelector('#signin-view:not([hidden])')
await page.fill('#signin-customer', cfg.slug)
await page.fill('#signin-email', cfg.email)
await page.fill('#signin-password', cfg.password)
await page.click('#signin-form button')
await page.waitForSelector('#status[data-state="connected"]')
await page.evaluate(() => {
  const m = { frames: 0, latencies: [] }
  window.benchMetrics = m
  const tick = () => { m.frames++; requestAnimationFrame(tick) }
  requestAnimationFrame(tick)
  window.webapp.fleet.getMap('live').observe((event) => {
    let sent = 0
    for (const key of event.keysChanged) { const v = event.target.get(key); if (v && v.sent > sent) sent = v.sent }
    if (sent) requestAnimationFrame(() => requestAnimationFrame(() => m.latencies.push(Date.now() - sent)))
  })
})

const doc = new Y.Doc()
const writer = new WebsocketProvider(`${cfg.ws}/sync/${cfg.slug}`, 'fleet', doc, { params: { token: cfg.token }, WebSocketPolyfill: WebSocket, disableBc: true })
while (!writer.synced) await sleep(20)
const live = doc.getMap('live')

async function phase (vehicles, seconds) {
  await page.evaluate(() => { window.benchMetrics.frames = 0; window.benchMetrics.latencies = [] })
  const started = Date.now()
  for (let s = 0; s < seconds; s++) {
    const t = Date.now()
    if (vehicles) {
      doc.transact(() => {
        for (let i = 0; i < vehicles; i++) {
          const a = (i / vehicles) * 2 * Math.PI + s * 0.01
          live.set(`bench-${i}`, { t: new Date(t).toISOString(), lat: 52.5 + 0.05 * Math.sin(a) + 0.0001 * s, lng: 13.4 + 0.08 * Math.cos(a), speed: 10, heading: (s * 7 + i) % 360, accuracy: 5, name: `Vehicle ${i}`, sent: t })
        }
      })
    }
    await sleep(Math.max(0, started + (s + 1) * 1000 - Date.now()))
  }
  await sleep(500)
  const m = await page.evaluate(() => window.benchMetrics)
  const elapsed = (Date.now() - started) / 1000
  const lat = m.latencies.slice().sort((x, y) => x - y)
  const pct = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : null)
  return { vehicles, seconds, fps: +(m.frames / elapsed).toFixed(1), updates: lat.length, latency_ms: { p50: pct(0.5), p95: pct(0.95), max: lat.length ? lat[lat.length - 1] : null } }
}

const idle = await phase(0, cfg.seconds)
const loaded = await phase(cfg.vehicles, cfg.seconds)
const shown = await page.evaluate(() => ({ markers: window.webapp.markers.size, listed: document.querySelectorAll('#vehicle-list li[data-vehicle]').length }))
await page.screenshot({ path: cfg.screenshot })
console.log(JSON.stringify({ idle, loaded, fps_ratio: +(loaded.fps / idle.fps).toFixed(3), shown, update_bytes: Y.encodeStateAsUpdate(doc).length }))
writer.destroy()
await browser.close()
process.exit(0)
