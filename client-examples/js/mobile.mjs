#!/usr/bin/env node
// Simulates a driver's phone: it syncs, loses the network, keeps recording GPS points and notes
// while offline, then comes back and merges with everything others did meanwhile.
//
//   node mobile.mjs --server ws://127.0.0.1:8080/sync/acme --token wst1... \
//        --vehicle v1 --day 2025-01-31 --points 50 --offline-ms 1000 [--expect-notes 2] [--name phone-1]
//
// Track doc `tracks/{vehicle}/{day}`: Y.Array `points` of {t, lat, lng, speed, heading, accuracy};
// Y.Map `notes` gets one entry per phone. Prints one JSON line: what the phone ended up with.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, cur, i, all) => {
  if (cur.startsWith('--')) acc.push([cur.slice(2), all[i + 1]])
  return acc
}, []))
const name = args.name || `phone-${process.pid}`
const points = Number(args.points || 20)
const offlineMs = Number(args['offline-ms'] || 500)
const expectNotes = Number(args['expect-notes'] || 1)
const docName = `tracks/${args.vehicle || 'v1'}/${args.day || '2025-01-31'}`

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
async function until (check, what, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

const doc = new Y.Doc()
const provider = new WebsocketProvider(args.server, docName, doc, {
  params: { token: args.token }, WebSocketPolyfill: WebSocket, disableBc: true, maxBackoffTime: 500
})
const track = doc.getArray('points')
const notes = doc.getMap('notes')

await until(() => provider.synced, 'first sync')
const before = track.length
provider.disconnect() // the tunnel: no network from here on
const start = Date.UTC(2025, 0, 31, 8, 0, 0) + (Number(args.seed || 0) * 1000)
for (let i = 0; i < points; i++) {
  track.push([{ t: start + i * 5000, lat: 52.5 + i * 0.0001, lng: 13.4 + i * 0.0001, speed: 12.5, heading: 90, accuracy: 5 }])
}
notes.set(name, `recorded ${points} points offline`)
await sleep(offlineMs)
provider.connect() // back online: sync step 1/2 exchanges what each side missed
await until(() => provider.synced, 'sync after reconnect')
await until(() => notes.size >= expectNotes, `${expectNotes} notes`)
await until(() => provider.ws && provider.ws.bufferedAmount === 0, 'send buffer to drain')
console.log(JSON.stringify({ name, before, points: track.length, notes: notes.toJSON(), ts: track.toArray().map((p) => p.t) }))
provider.destroy()
await sleep(50)
process.exit(0)
