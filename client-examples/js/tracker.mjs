#!/usr/bin/env node
// A vehicle's phone recording GPS into its track document while offline, then reconnecting.
//
//   node tracker.mjs --server ws://127.0.0.1:8080/sync/acme --token wst1... --vehicle <id> \
//        --day 2025-01-31 --points 10000 --start-ms 1738310400000 [--interval-ms 1000] [--offline 1]
//
// Track doc `tracks/{vehicle}/{day}`: Y.Array `points`, one element per fix
// {t (epoch ms), lat, lng, speed (m/s), heading, accuracy}. The route goes back and forth along
// lat 52.5 between lng 13.40 and 13.42 (1000 fixes each way). With --points 0 it only syncs (a
// resync after a server restart). With --prebuilt 1 every fix is recorded before the first
// connection (one update of all of them, as a phone that was never online that day) and the line
// also carries connect_ms, when the connection was opened (the benchmark's start); --connect-at
// <epoch ms> holds the connection until then, so several clients built offline connect together.
// --fixes <file.json> records the fixes of that JSON array (same fields) instead of the route.
// Online (--offline 0), --batches N sends them as N batches, each fix its own update as it is
// recorded, the send buffer drained and --pause-ms (default 1000) waited between batches.
// Prints one JSON line: what the phone holds after syncing.
import { readFileSync } from 'node:fs'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, cur, i, all) => {
  if (cur.startsWith('--')) acc.push([cur.slice(2), all[i + 1]])
  return acc
}, []))
const recorded = args.fixes ? JSON.parse(readFileSync(args.fixes, 'utf8')) : null
const points = recorded ? recorded.length : Number(args.points || 0)
const interval = Number(args['interval-ms'] || 1000)
const start = Number(args['start-ms'] || Date.now() - points * interval)
const offline = args.offline !== '0'
const docName = `tracks/${args.vehicle}/${args.day}`

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
async function until (check, what, timeoutMs = 120000) {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

export function fix (i) {
  const leg = i % 2000
  const step = leg < 1000 ? leg : 2000 - leg
  return { t: start + i * interval, lat: 52.5, lng: 13.4 + step * 0.00002, speed: 1.36, heading: leg < 1000 ? 90 : 270, accuracy: 5 }
}

const batches = offline ? 1 : Math.max(1, Number(args.batches || 1))
const pause = Number(args['pause-ms'] || 1000)

const doc = new Y.Doc()
const track = doc.getArray('points')
const prebuilt = args.prebuilt === '1'
if (prebuilt) track.push(Array.from({ length: points }, (_, i) => (recorded ? recorded[i] : fix(i))))
// --connect-at <epoch ms>: several phones built offline connect at the same instant (a benchmark's start)
if (args['connect-at']) await sleep(Math.max(0, Number(args['connect-at']) - Date.now()))
const connectMs = Date.now()
const provider = new WebsocketProvider(args.server, docName, doc, {
  params: { token: args.token }, WebSocketPolyfill: WebSocket, disableBc: true, maxBackoffTime: 500
})
await until(() => provider.synced, 'first sync')
const before = prebuilt ? 0 : track.length
if (points > 0 && !prebuilt) {
  if (offline) provider.disconnect() // no network: fixes pile up locally
  const per = Math.ceil(points / batches)
  for (let b = 0; b < batches; b++) {
    for (let i = b * per; i < Math.min(points, (b + 1) * per); i++) track.push([recorded ? recorded[i] : fix(before + i)]) // one fix at a time, as a phone records
    if (b < batches - 1) {
      await until(() => provider.ws && provider.ws.bufferedAmount === 0, 'batch to leave')
      await sleep(pause)
    }
  }
  if (offline) {
    provider.connect()
    await until(() => provider.synced, 'sync after reconnect')
  }
}
await until(() => provider.ws && provider.ws.bufferedAmount === 0, 'send buffer to drain')
await sleep(200) // let the last frame leave the socket before closing
console.log(JSON.stringify({ before, points: track.length, ...(prebuilt ? { connect_ms: connectMs } : {}) }))
provider.destroy()
await sleep(50)
process.exit(0)
