#!/usr/bin/env node
// Simulates a driver's phone on the client library (@webhost/sync-client: clients/js): it syncs,
// loses the network, keeps recording GPS points and notes while offline, then comes back and
// merges with everything others did meanwhile.
//
//   node mobile.mjs --server ws://127.0.0.1:8080/sync/acme --token wst1... \
//        --vehicle v1 --day 2025-01-31 --points 50 --offline-ms 1000 [--expect-notes 2] [--name phone-1]
//
// Track doc `tracks/{vehicle}/{day}`: Y.Array `points` of {t, lat, lng, speed, heading, accuracy}
// (tracker.record); Y.Map `notes` gets one entry per phone. Prints one JSON line once its edits
// are durable on the server: what the phone ended up with.
import WebSocket from 'ws'
import { connect } from '@webhost/sync-client'

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, cur, i, all) => {
  if (cur.startsWith('--')) acc.push([cur.slice(2), all[i + 1]])
  return acc
}, []))
const name = args.name || `phone-${process.pid}`
const points = Number(args.points || 20)
const offlineMs = Number(args['offline-ms'] || 500)
const expectNotes = Number(args['expect-notes'] || 1)
const day = args.day || '2025-01-31'
const [, url, customer] = /^(wss?:\/\/[^/]+)\/sync\/([^/]+)\/?$/.exec(args.server)

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
async function until (check, what, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

const session = connect({ url, customer, getToken: async () => args.token, WebSocket, storage: null, backoff: { maxMs: 500 } })
const tracker = session.tracker(args.vehicle || 'v1')
const track = tracker.day(day)
const notes = track.doc.getMap('notes')

await until(() => track.synced, 'first sync')
const before = track.doc.getArray('points').length
session.disconnect() // the tunnel: no network from here on
const start = Date.parse(`${day}T08:00:00Z`) + (Number(args.seed || 0) * 1000)
for (let i = 0; i < points; i++) {
  tracker.record({ t: start + i * 5000, lat: 52.5 + i * 0.0001, lng: 13.4 + i * 0.0001, speed: 12.5, heading: 90, accuracy: 5 })
}
notes.set(name, `recorded ${points} points offline`)
await sleep(offlineMs)
session.connect() // back online: sync step 1/2 exchanges what each side missed
await until(() => track.synced, 'sync after reconnect')
await until(() => notes.size >= expectNotes, `${expectNotes} notes`)
await track.whenDurable()
console.log(JSON.stringify({ name, before, points: track.doc.getArray('points').length, notes: notes.toJSON(), ts: track.doc.getArray('points').toArray().map((p) => p.t) }))
await session.close()
process.exit(0)
