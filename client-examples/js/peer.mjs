#!/usr/bin/env node
// A y-websocket peer of WebHost Sync driven by a JSON plan (the tests use it as a real client).
//
//   node peer.mjs '<plan json>'
//
// plan = {
//   "server": "ws://127.0.0.1:8080/sync/acme",   // the customer's sync base URL
//   "doc": "fleet", "token": "wst1....",
//   "read": {"maps": ["m"], "arrays": ["a"], "texts": ["t"]},   // what to print
//   "steps": [ {"op": "synced"}, {"op": "set", "map": "m", "key": "k", "value": 1}, ... ]
// }
// Steps: synced | set | setMany | delete | push | pushMany | insert | awareness | waitKey | waitArrayLength |
//        waitText | waitPresence | waitPresenceAtMost | waitClosed | waitReconnect | disconnect |
//        connect | sleep | flush | print | writeUntil | waitWritten
//   writeUntil  {array | map, stopFile, everyMs, doneMap, originMs?, slot?, slots?}: keep writing one
//               GPS point {by, n, t, lat, lng, speed} (array push, or map key "<writer>:<n>") every
//               everyMs until stopFile exists, then record how many this writer wrote in Y.Map
//               doneMap (key: plan.name or the clientID)
//   waitWritten {array | map, doneMap, writers}: wait until doneMap has `writers` entries and every
//               writer's points are all here (the clients converged)
// Every `print` step and the end print one JSON line: the doc content, presence and events.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { existsSync } from 'node:fs'

const plan = JSON.parse(process.argv[2])
const started = Date.now()
const doc = new Y.Doc()
const events = []
let connects = 0
let closed = null
let lastStatus = null

const provider = new WebsocketProvider(plan.server, plan.doc, doc, {
  params: plan.token ? { token: plan.token } : {},
  WebSocketPolyfill: WebSocket,
  connect: plan.connect !== false,
  disableBc: true,
  maxBackoffTime: plan.maxBackoffTime || 500
})
provider.on('status', ({ status }) => {
  lastStatus = status
  events.push({ t: Date.now() - started, status })
  if (status === 'connected') connects++
})
provider.on('connection-close', (event) => {
  if (event) events.push({ t: Date.now() - started, close: event.code, reason: event.reason })
})
provider.on('closed', (event) => {
  closed = { code: event.code, reason: event.reason }
})
provider.awareness.on('change', ({ added, updated, removed }, origin) => {
  if (removed.length) {
    events.push({
      t: Date.now() - started,
      presenceRemoved: removed,
      origin: origin === 'local' ? 'local' : origin === 'timeout' ? 'timeout' : 'remote'
    })
  }
})

const writer = plan.name || String(doc.clientID)

// entries per writer of the array (items {by}) or map (keys "<by>:<n>") a write step targets
function writtenBy (s) {
  const counts = {}
  const add = (by) => { counts[by] = (counts[by] || 0) + 1 }
  if (s.array) doc.getArray(s.array).forEach((item) => add(item && item.by))
  else doc.getMap(s.map).forEach((_, key) => add(key.slice(0, key.lastIndexOf(':'))))
  return counts
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
async function until (check, what, timeoutMs = plan.timeoutMs || 60000) {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

function snapshot (mark) {
  const read = plan.read || {}
  const out = { mark, clientID: doc.clientID, connects, closed, synced: provider.synced, events }
  out.maps = read.lengthsOnly ? {} : Object.fromEntries((read.maps || []).map((n) => [n, doc.getMap(n).toJSON()]))
  out.mapSizes = Object.fromEntries((read.maps || []).map((n) => [n, doc.getMap(n).size]))
  out.arrays = read.lengthsOnly ? {} : Object.fromEntries((read.arrays || []).map((n) => [n, doc.getArray(n).toJSON()]))
  out.arrayLengths = Object.fromEntries((read.arrays || []).map((n) => [n, doc.getArray(n).length]))
  out.texts = Object.fromEntries((read.texts || []).map((n) => [n, doc.getText(n).toString()]))
  out.presence = Array.from(provider.awareness.getStates().entries())
    .filter(([id]) => id !== doc.clientID)
    .map(([id, state]) => ({ id, state }))
  return out
}

// stdout is a pipe in the tests: wait until a line is written before going on (or exiting)
const emit = (obj) => new Promise((resolve) => process.stdout.write(JSON.stringify(obj) + '\n', resolve))

const steps = {
  synced: () => until(() => provider.synced, 'sync'),
  set: (s) => doc.getMap(s.map).set(s.key, s.value),
  delete: (s) => doc.getMap(s.map).delete(s.key),
  push: (s) => doc.getArray(s.array).push(s.values),
  pushMany: (s) => {
    const arr = doc.getArray(s.array)
    for (let i = 0; i < s.count; i++) arr.push([s.prefix ? `${s.prefix}${i}` : i]) // one update each
  },
  setMany: (s) => {
    const map = doc.getMap(s.map)
    for (let i = 0; i < s.count; i++) map.set(`${s.prefix || 'k'}${i}`, i) // one update each
  },
  insert: (s) => doc.getText(s.text).insert(s.index ?? doc.getText(s.text).length, s.value),
  awareness: (s) => provider.awareness.setLocalState(s.state),
  waitKey: (s) => until(() => doc.getMap(s.map).has(s.key), `key ${s.key}`),
  waitArrayLength: (s) => until(() => doc.getArray(s.array).length >= s.length, `array length ${s.length}`),
  waitText: (s) => until(() => doc.getText(s.text).toString().includes(s.contains), `text ${s.contains}`),
  waitPresence: (s) => until(() => provider.awareness.getStates().size - 1 >= s.count, `presence ${s.count}`),
  waitPresenceAtMost: (s) => until(() => provider.awareness.getStates().size - 1 <= s.count, `presence <= ${s.count}`),
  waitClosed: () => until(() => closed !== null, 'terminal close'),
  waitReconnect: async (s) => {
    const target = connects + (s.count || 1)
    await until(() => connects >= target && provider.synced, 'reconnect')
  },
  disconnect: () => provider.disconnect(),
  connect: () => provider.connect(),
  sleep: (s) => sleep(s.ms),
  flush: async () => {
    await until(() => !provider.ws || provider.ws.bufferedAmount === 0, 'send buffer to drain')
  },
  print: (s) => emit(snapshot(s.mark || 'print')),
  writeUntil: async (s) => {
    let n = 0
    while (!existsSync(s.stopFile)) {
      // a fix every writer agrees with: the position follows the time (about 1 m/s north of
      // 52.5,13.4 from originMs), and writers never share a millisecond (t mod slots = slot)
      const slots = s.slots || 1
      const t = Math.floor(Date.now() / slots) * slots + (s.slot || 0)
      const point = { by: writer, n, t, lat: 52.5 + (t - (s.originMs || started)) * 1e-8, lng: 13.4, speed: 1 }
      if (s.array) doc.getArray(s.array).push([point])
      else doc.getMap(s.map).set(`${writer}:${n}`, point)
      n++
      await sleep(s.everyMs || 20)
    }
    doc.getMap(s.doneMap).set(writer, n)
  },
  waitWritten: (s) => until(() => {
    const done = doc.getMap(s.doneMap)
    if (done.size < s.writers) return false
    const have = writtenBy(s)
    return Array.from(done.entries()).every(([by, n]) => have[by] === n)
  }, `every writer's points in ${s.array || s.map}`)
}

try {
  for (const step of plan.steps || []) {
    const run = steps[step.op]
    if (!run) throw new Error(`unknown step ${step.op}`)
    await run(step)
  }
  await emit(snapshot('end'))
  const ws = provider.ws
  provider.destroy() // leave: the close frame goes after everything already queued
  // exit only once the socket closed, or the frames still buffered would never leave this process
  if (ws) await until(() => ws.readyState === 3, 'socket to close', 30000).catch(() => {})
  process.exit(0)
} catch (err) {
  console.error(err.stack || String(err))
  await emit({ ...snapshot('error'), error: String(err) })
  process.exit(1)
}
