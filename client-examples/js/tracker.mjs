#!/usr/bin/env node
// A vehicle's phone recording GPS into its track documents while offline, then reconnecting, on
// the client library (@webhost/sync-client: clients/js).
//
//   node tracker.mjs --server ws://127.0.0.1:8080/sync/acme --token wst1... --vehicle <id> \
//        --day 2025-01-31 --points 10000 --start-ms 1738310400000 [--interval-ms 1000] [--offline 1]
//
// Track doc `tracks/{vehicle}/{day}`: Y.Array `points`, one element per fix
// {t (epoch ms), lat, lng, speed (m/s), heading, accuracy}; the library puts each fix in its UTC
// day's document (--day is the one synced first). The route goes back and forth along lat 52.5
// between lng 13.40 and 13.42 (1000 fixes each way). With --points 0 it only syncs (a resync after
// a server restart). With --prebuilt 1 every fix is recorded before the first connection (one
// update of all of them, as a phone that was never online that day) and the line also carries
// connect_ms, when the connection was opened (the benchmark's start); --connect-at <epoch ms>
// holds the connection until then, so several clients built offline connect together.
// --fixes <file.json> records the fixes of that JSON array (same fields) instead of the route.
// Online (--offline 0), --batches N sends them as N batches, each fix its own update as it is
// recorded, each batch durable and --pause-ms (default 1000) waited between batches.
// Prints one JSON line once everything is durable on the server: what the phone holds.
import { readFileSync } from 'node:fs'
import WebSocket from 'ws'
import { connect } from '@webhost/sync-client'

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, cur, i, all) => {
  if (cur.startsWith('--')) acc.push([cur.slice(2), all[i + 1]])
  return acc
}, []))
const recorded = args.fixes ? JSON.parse(readFileSync(args.fixes, 'utf8')) : null
const points = recorded ? recorded.length : Number(args.points || 0)
const interval = Number(args['interval-ms'] || 1000)
const start = Number(args['start-ms'] || Date.now() - points * interval)
const offline = args.offline !== '0'
const [, url, customer] = /^(wss?:\/\/[^/]+)\/sync\/([^/]+)\/?$/.exec(args.server)

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
const prebuilt = args.prebuilt === '1'
const session = connect({
  url, customer, getToken: async () => args.token, WebSocket, storage: null, online: !prebuilt, backoff: { maxMs: 500 }
})
const tracker = session.tracker(args.vehicle)
const total = () => tracker.days.reduce((n, day) => n + tracker.day(day).doc.getArray('points').length, 0)
if (prebuilt) tracker.recordAll(Array.from({ length: points }, (_, i) => (recorded ? recorded[i] : fix(i))))
// --connect-at <epoch ms>: several phones built offline connect at the same instant (a benchmark's start)
if (args['connect-at']) await sleep(Math.max(0, Number(args['connect-at']) - Date.now()))
const connectMs = Date.now()
if (prebuilt) session.connect()
const first = tracker.day(args.day)
await until(() => first.synced, 'first sync')
const before = prebuilt ? 0 : total()
if (points > 0 && !prebuilt) {
  if (offline) session.disconnect() // no network: fixes pile up locally
  const per = Math.ceil(points / batches)
  for (let b = 0; b < batches; b++) {
    for (let i = b * per; i < Math.min(points, (b + 1) * per); i++) tracker.record(recorded ? recorded[i] : fix(before + i)) // one fix at a time, as a phone records
    if (b < batches - 1) {
      await session.whenDurable()
      await sleep(pause)
    }
  }
  if (offline) session.connect()
}
await session.whenDurable() // every fix committed on the server
console.log(JSON.stringify({ before, points: total(), ...(prebuilt ? { connect_ms: connectMs } : {}) }))
await session.close()
process.exit(0)
