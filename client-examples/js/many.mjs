#!/usr/bin/env node
// Many y-websocket providers of one version on one document, in one process (issue 15: a fleet larger
// than its plan's connection limit).
//
//   node many.mjs '{"lib": "y-websocket", "server": "ws://.../sync/acme", "doc": "fleet",
//                   "token": "wst1...", "clients": 2000, "seconds": 60, "rampMs": 5000}'
//
// Providers start spread over rampMs. Each one that syncs writes its own key into Y.Map `m` once.
// Prints one JSON line: attempts (WebSocket objects created), close codes seen (counts), how many
// providers ever synced, how many are connected at the end, and the keys of `m` one synced provider
// holds at the end (every synced provider's write reached it).
import * as Y from 'yjs'
import WebSocket from 'ws'

const plan = JSON.parse(process.argv[2])
const { WebsocketProvider } = await import(plan.lib || 'y-websocket')
let attempts = 0
const closeCodes = {}

class CountingWebSocket extends WebSocket {
  constructor (...args) {
    super(...args)
    attempts++
    this.addEventListener('close', (event) => { closeCodes[event.code] = (closeCodes[event.code] || 0) + 1 })
    this.addEventListener('error', () => {})
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const providers = []
const everSynced = new Set()
const n = Number(plan.clients || 100)
const ramp = Number(plan.rampMs || 0)
const started = Date.now()
for (let i = 0; i < n; i++) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(plan.server, plan.doc, doc, {
    params: { token: plan.token }, WebSocketPolyfill: CountingWebSocket, disableBc: true
  })
  provider.on('sync', (synced) => {
    if (synced && !everSynced.has(i)) {
      everSynced.add(i)
      doc.getMap('m').set(`c${i}`, Date.now() - started)
    }
  })
  providers.push(provider)
  if (ramp) await sleep(ramp / n)
}
const deadline = started + Number(plan.seconds || 60) * 1000
while (Date.now() < deadline) await sleep(100)
const connected = providers.filter((p) => p.wsconnected && p.synced)
await sleep(500)
const keys = connected.length ? connected[0].doc.getMap('m').size : 0
console.log(JSON.stringify({ lib: plan.lib || 'y-websocket', clients: n, attempts, close_codes: closeCodes, ever_synced: everSynced.size, connected_at_end: connected.length, keys_seen: keys }))
for (const p of providers) p.destroy()
await sleep(100)
process.exit(0)
