#!/usr/bin/env node
// A stock y-websocket client (any installed major: y-websocket, y-websocket-v1, y-websocket-v2)
// that records every message type the server sends it, for the tests of WebHost's wire additions.
//
//   node stock.mjs '<plan json>'
//
// plan = {"module": "y-websocket-v2", "server": "ws://.../sync/acme", "doc": "tracks/v/2026-12-01",
//         "params": {"token": "wst1..."}, "push": 3, "array": "points", "point": {...},
//         "watchServerState": true, "until": {"rejected": "quota_exceeded", "count": 5},
//         "waitMs": 1500, "timeoutMs": 30000, "handleWebhost": false}
// Connects, waits for sync, pushes `push` elements (one update each, `point` with its index as
// `n` and `t` = point.t + index), waits `waitMs` (or until the server's awareness state shows
// `until`), and prints one JSON line: the message types received (counts), console errors, the
// server's awareness state (client id 2^53 - 1), whether it was ever removed, and the close if any.
import * as Y from 'yjs'
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import WebSocket from 'ws'

const plan = JSON.parse(process.argv[2])
const { WebsocketProvider } = await import(plan.module || 'y-websocket')
const SERVER_ID = Number.MAX_SAFE_INTEGER
const received = {}
const errors = []
const originalError = console.error
console.error = (...args) => { errors.push(args.map(String).join(' ')); originalError(...args) }

class TapSocket extends WebSocket {
  constructor (...args) {
    super(...args)
    this.addEventListener('message', (event) => {
      const data = new Uint8Array(event.data)
      const type = data.length ? data[0] : -1 // every type in use fits one varUint byte
      received[type] = (received[type] || 0) + 1
    })
  }
}

const doc = new Y.Doc()
let closed = null
const provider = new WebsocketProvider(plan.server, plan.doc, doc, {
  params: plan.params || {},
  WebSocketPolyfill: TapSocket,
  disableBc: true,
  maxBackoffTime: 500
})
// With plan.handleWebhost the client handles WebHost's message type 87 itself (README, "WebHost's own
// messages"): every y-websocket major keeps its message handlers per provider.
const durable = []
const refreshed = []
if (plan.handleWebhost) {
  provider.messageHandlers[87] = (encoder, decoder) => {
    const version = decoding.readVarUint(decoder)
    const kind = decoding.readVarUint(decoder)
    if (version !== 1) return
    if (kind === 3) durable.push(decoding.readVarUint(decoder))
    if (kind === 1) refreshed.push({ expiresAt: decoding.readVarUint(decoder) })
    if (kind === 2) refreshed.push({ refused: decoding.readVarString(decoder) })
  }
}
// plan.refresh = {token, afterMs}: hand the server a new token on the open socket (README)
function refresh (token) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, 87)
  encoding.writeVarUint(e, 1)
  encoding.writeVarUint(e, 0)
  encoding.writeVarString(e, token)
  provider.ws.send(encoding.toUint8Array(e))
  if (provider.params) provider.params.token = token // 2.x/3.x reconnect with it; 1.x built its URL once
}
provider.on('connection-close', (event) => { if (event && !closed) closed = { code: event.code, reason: event.reason } })
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const deadline = Date.now() + (plan.timeoutMs || 30000)
async function until (check, what) {
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}
const serverState = () => provider.awareness.getStates().get(SERVER_ID) || null
const serverRemoved = [] // when the server's state left this client's awareness (a timeout would)
provider.awareness.on('change', ({ removed }, origin) => {
  if (removed.includes(SERVER_ID)) serverRemoved.push({ origin: origin === 'timeout' ? 'timeout' : String(origin) })
})

try {
  await until(() => provider.synced, 'sync')
  const arr = doc.getArray(plan.array || 'a')
  for (let i = 0; i < (plan.push || 0); i++) {
    const point = plan.point ? { ...plan.point, n: i, t: plan.point.t + i * 1000 } : i
    arr.push([point])
  }
  if (plan.refresh) {
    await sleep(plan.refresh.afterMs || 0)
    refresh(plan.refresh.token)
  }
  if (plan.until) {
    const { rejected, count } = plan.until
    await until(() => {
      const s = serverState()
      return s && s.rejected && (s.rejected[rejected] || 0) >= count
    }, `server state with ${count} ${rejected}`)
  }
  await sleep(plan.waitMs || 0)
  const out = { received, errors, durable, refreshed, serverState: serverState(), serverRemoved, closed, synced: provider.synced }
  process.stdout.write(JSON.stringify(out) + '\n', () => { provider.destroy(); setTimeout(() => process.exit(0), 200) })
} catch (err) {
  process.stdout.write(JSON.stringify({ error: String(err), received, errors, serverState: serverState(), closed }) + '\n',
    () => process.exit(1))
}
