#!/usr/bin/env node
// A y-websocket client of a chosen major version at the edges of the transport (issue 15).
//
//   node edge.mjs '<plan json>'
//
// plan = {
//   "lib": "y-websocket" | "y-websocket-v1" | "y-websocket-v2",   // 3.x, 1.5.4, 2.1.0
//   "server": "ws://127.0.0.1:8080/sync/acme", "doc": "tracks/<vehicle>/<day>", "token": "wst1...",
//   "seconds": 30,            // how long to keep the provider running at most
//   "points": 0,              // fixes recorded offline before the first connection (one update)
//   "startMs": 1738310400000, "intervalMs": 1000,  // time of the first fix, and between fixes
//   "until": "synced" | "closed" | "time"   // stop at the first sync, a final close, or after `seconds`
// }
// Track fixes carry all seven documented fields {t, lat, lng, speed, heading, accuracy, alt}.
// Prints one JSON line: attempts (WebSocket objects the provider created), opens, the close codes
// and reasons it saw, whether it synced and when, the update's size and the points it holds.
import * as Y from 'yjs'
import WebSocket from 'ws'

const plan = JSON.parse(process.argv[2])
const { WebsocketProvider } = await import(plan.lib || 'y-websocket')
const started = Date.now()
let attempts = 0
let opens = 0
const closes = []

class CountingWebSocket extends WebSocket {
  constructor (...args) {
    super(...args)
    attempts++
    this.addEventListener('open', () => { opens++ })
    this.addEventListener('close', (event) => { closes.push({ t: Date.now() - started, code: event.code, reason: event.reason }) })
  }
}

const doc = new Y.Doc()
const track = doc.getArray('points')
const points = Number(plan.points || 0)
const intervalMs = Number(plan.intervalMs || 1000)
const startMs = Number(plan.startMs || Date.now() - points * intervalMs)
if (points > 0) {
  const fixes = new Array(points)
  for (let i = 0; i < points; i++) {
    const leg = i % 2000
    const step = leg < 1000 ? leg : 2000 - leg
    fixes[i] = { t: startMs + i * intervalMs, lat: 52.5, lng: 13.4 + step * 0.00002, speed: 1.36, heading: leg < 1000 ? 90 : 270, accuracy: 5, alt: 34.5 }
  }
  track.push(fixes)
}
const updateBytes = Y.encodeStateAsUpdate(doc).length
const connectMs = Date.now()
const provider = new WebsocketProvider(plan.server, plan.doc, doc, {
  params: plan.token ? { token: plan.token } : {},
  WebSocketPolyfill: CountingWebSocket,
  disableBc: true
})
let syncedMs = null
provider.on('sync', (isSynced) => { if (isSynced && syncedMs === null) syncedMs = Date.now() - connectMs })

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const deadline = started + Number(plan.seconds || 30) * 1000
const until = plan.until || 'time'
while (Date.now() < deadline) {
  if (until === 'synced' && syncedMs !== null && provider.ws && provider.ws.bufferedAmount === 0) break
  if (until === 'closed' && !provider.shouldConnect) break
  await sleep(20)
}
if (until === 'synced' && syncedMs !== null) await sleep(300) // let the last frame leave the socket
console.log(JSON.stringify({
  lib: plan.lib || 'y-websocket',
  attempts,
  opens,
  closes,
  synced: syncedMs !== null,
  synced_ms: syncedMs,
  stopped: !provider.shouldConnect,
  update_bytes: updateBytes,
  points: track.length,
  connect_ms: connectMs
}))
provider.destroy()
await sleep(50)
process.exit(0)
