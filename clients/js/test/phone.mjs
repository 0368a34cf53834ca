#!/usr/bin/env node
// A phone app built on @webhost/sync-client, driven by tests/test_sync_client_js.py against a real
// server. One run is one start of the app (the file store in plan.dir survives between runs):
//
//   node test/phone.mjs '<plan json>'
//
// plan = {
//   "server": "http://127.0.0.1:8080" (or a dead port: no network), "customer": "acme",
//   "apiKey": "wsk_live_...",           // the app's "back end": POST /api/v1/sync-tokens with it
//   "ttl": 3600,                        // seconds of each token
//   "dir": "/tmp/phone",                // fileStorage directory
//   "vehicle": "<id>",
//   "record": { "from": 0, "count": 5000, "startMs": ..., "intervalMs": 1000, "duplicates": 0 },
//      fixes i = from..from+count-1 recorded with an injected clock (startMs + i * intervalMs) and
//      no `t` of their own; `duplicates` records that many of them twice
//   "then": "exit"              close the session (the store is written) and stop
//         | "durable"           wait for the session's first `durable`; at that event print
//                               {"event": "durable", ...} and block the whole process (fs.readSync on
//                               stdin) until the test writes a line; then `after`
//         | "restart"           durable, then {"event": "stop-server"} (blocks until the test stopped
//                               it), records `after` offline, {"event": "start-server"} (blocks until
//                               it is back on the same port), then durable again
//         | "refused"           wait for the `refused` state, then 3 s more (no retry may follow)
//         | "feedback"          wait until the tracker's feedback covers every recorded element
//   "after": { "count": 20, "everyMs": 250, "startMs": ... }   (with "durable": more fixes, one
//         every everyMs while tokens expire, then durable again)
//   "token": "expired"          each token expires before the app gets it (4401 twice: refused)
//          | "other-doc"        tokens for `fleet` only (4403: refused)
//   "waitFeedback": true        after everything: wait for the feedback to cover all elements
// }
// Prints JSON lines; the last one is the summary: points per day, pending, statuses seen, token
// fetches, the close codes of every socket, the feedback.
import WebSocket from 'ws'
import { blockUntilGo } from './checkpoint.mjs'
import { connect } from '@webhost/sync-client'
import { fileStorage } from '@webhost/sync-client/node'

const plan = JSON.parse(process.argv[2])
const out = (value) => process.stdout.write(JSON.stringify(value) + '\n')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const closes = []
let tokenFetches = 0

class CountingWebSocket extends WebSocket {
  constructor (...args) {
    super(...args)
    this.addEventListener('close', (event) => closes.push(event.code))
  }
}

let clockMs = 0
const session = connect({
  url: plan.server,
  customer: plan.customer,
  WebSocket: CountingWebSocket,
  storage: fileStorage(plan.dir),
  backoff: { baseMs: 100, maxMs: 1000 },
  clock: () => clockMs,
  async getToken () {
    tokenFetches++
    const res = await fetch(`${plan.server}/api/v1/sync-tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${plan.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ docs: plan.token === 'other-doc' ? ['fleet'] : ['tracks/*'], ttl_seconds: plan.token === 'expired' ? 1 : plan.ttl || 3600 })
    })
    if (!res.ok) throw new Error(`sync-tokens ${res.status}`)
    const { token } = await res.json()
    if (plan.token === 'expired') await sleep(1500) // it expires on the way to the app
    return token
  }
})
const statuses = []
session.on('status', ({ status, pending }) => { if (statuses[statuses.length - 1] !== status) statuses.push(status); void pending })
const errors = []
session.on('error', (e) => errors.push(String(e.message || e)))
const tracker = session.tracker(plan.vehicle) // before the resumed days are open: it learns of them
await session.whenResumed
const resumed = Object.fromEntries([...session.docs].map(([name, d]) => [name, { points: d.doc.getArray('points').length, pending: d.pending }]))

function record ({ from = 0, count = 0, startMs, intervalMs = 1000, duplicates = 0 }) {
  for (let i = from; i < from + count; i++) {
    const leg = i % 2000
    const step = leg < 1000 ? leg : 2000 - leg
    clockMs = startMs + i * intervalMs
    const fix = { lat: 52.5, lng: 13.4 + step * 0.00002, speed: 1.36, heading: leg < 1000 ? 90 : 270, accuracy: 5 }
    tracker.record(fix)
    if (i - from < duplicates) tracker.record(fix) // the same time again: the server rejects it as a duplicate
  }
}

const summary = () => ({
  event: 'summary',
  resumed,
  days: Object.fromEntries(tracker.days.map((day) => [day, tracker.day(day).doc.getArray('points').length])),
  pending: session.pending,
  status: session.status,
  statuses,
  tokenFetches,
  closes,
  errors: [...new Set(errors)].slice(0, 10),
  feedback: tracker.feedback()
})

async function until (check, what, ms = 120000) {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) { out({ ...summary(), event: 'timeout', what }); process.exit(2) }
    await sleep(20)
  }
}

if (plan.record) record(plan.record)
const total = () => tracker.days.reduce((n, day) => n + tracker.day(day).doc.getArray('points').length, 0)
const fed = () => { const f = tracker.feedback(); return tracker.days.every((d) => f.days[d] && f.days[d].materialized === tracker.day(d).doc.getArray('points').length) }

if (plan.then === 'durable') {
  await new Promise((resolve) => {
    const check = ({ status }) => {
      if (status !== 'durable') return
      off()
      // the instant of the event: tell the test and freeze this process until it has looked
      out({ event: 'durable', days: summary().days, pending: session.pending })
      blockUntilGo()
      resolve()
    }
    const off = session.on('status', check)
    check({ status: session.status })
  })
  if (plan.after) {
    const { count, everyMs, startMs } = plan.after
    for (let i = 0; i < count; i++) {
      clockMs = startMs + i * 1000
      tracker.record({ lat: 52.6, lng: 13.5 + i * 0.00002, accuracy: 5 })
      await sleep(everyMs)
    }
    await session.whenDurable()
  }
} else if (plan.then === 'restart') {
  // the server goes away while the phone keeps recording; it reconnects by itself (backoff) when
  // the server is back, and everything becomes durable
  await until(() => session.status === 'durable', 'durable before the restart')
  out({ event: 'stop-server' })
  blockUntilGo()
  await until(() => session.status === 'offline', 'offline once the server is gone')
  const { count, startMs } = plan.after
  for (let i = 0; i < count; i++) {
    clockMs = startMs + i * 1000
    tracker.record({ lat: 52.6, lng: 13.5 + i * 0.00002, accuracy: 5 })
  }
  out({ event: 'start-server', pending: session.pending, status: session.status })
  blockUntilGo()
  await until(() => session.status === 'durable', 'durable after the restart')
} else if (plan.then === 'refused') {
  await until(() => session.status === 'refused', 'refused')
  const atRefusal = closes.length
  await sleep(3000) // no retry follows
  out({ event: 'refused', closesAtRefusal: atRefusal, refusal: [...session.docs.values()].map((d) => d.refusal) })
} else if (plan.then === 'feedback') {
  await until(() => session.status === 'durable', 'durable')
}
if (plan.waitFeedback || plan.then === 'feedback') await until(() => total() > 0 && fed(), 'feedback for every element')
const last = summary()
await session.close()
out(last)
process.exit(0)
