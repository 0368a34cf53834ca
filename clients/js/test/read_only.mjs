#!/usr/bin/env node
// An app on @webhost/sync-client whose back end first hands it read-only tokens, then (the user's
// role widened) read-write ones; driven by tests/test_sync_client_js.py against a real server.
//   node test/read_only.mjs '<{"server", "customer", "apiKey"}>'
// Tokens last 6 s (the session asks for the next one 2 s before the expiry). Steps: open `notes`
// with a read-only token (the server denies the empty sync step 2: `read_only`, nothing pending);
// 3 edits (kept, pending 3, not sent); {"event": "read-only", ...} and block until the test looked
// at the database; the back end grants "rw" from now on; the next token reconnects the document and
// its sync step 2 carries the edits: durable. Last line: {"event": "done", ...}.
import WebSocket from 'ws'
import { blockUntilGo } from './checkpoint.mjs'
import { connect, memoryStorage } from '@webhost/sync-client'

const plan = JSON.parse(process.argv[2])
const out = (value) => process.stdout.write(JSON.stringify(value) + '\n')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
let mode = 'r'
const modes = []
let sockets = 0
let updatesAfterDenial = 0 // sync update frames (type 0, sub-type 2) written on a denied socket

class CountingWebSocket extends WebSocket {
  constructor (...args) {
    super(...args)
    sockets++
    this.denied = false
    this.addEventListener('message', ({ data }) => {
      const bytes = new Uint8Array(data)
      if (bytes[0] === 2 && bytes[1] === 0) this.denied = true // y-protocols/auth: permission denied
    })
  }

  send (data) {
    const bytes = new Uint8Array(data.buffer ? data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) : data)
    if (this.denied && bytes[0] === 0 && bytes[1] === 2) updatesAfterDenial++
    super.send(data)
  }
}

const session = connect({
  url: plan.server,
  customer: plan.customer,
  WebSocket: CountingWebSocket,
  storage: memoryStorage(),
  backoff: { baseMs: 100, maxMs: 1000 },
  async getToken () {
    modes.push(mode)
    const res = await fetch(`${plan.server}/api/v1/sync-tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${plan.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ docs: ['notes'], mode, ttl_seconds: 6 })
    })
    if (!res.ok) throw new Error(`sync-tokens ${res.status}`)
    return (await res.json()).token
  }
})
const errors = []
session.on('error', (e) => errors.push(String(e.message || e)))
const notes = session.open('notes')
const statuses = []
notes.on('status', ({ status, pending }) => statuses.push(`${status}:${pending}`))
const denials = []
notes.on('denied', ({ reason }) => denials.push(reason))

async function until (check, what, ms = 60000) {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) { out({ event: 'timeout', what, status: notes.status, pending: notes.pending, statuses, errors }); process.exit(2) }
    await sleep(20)
  }
}
const state = () => ({ status: notes.status, pending: notes.pending, readOnly: notes.readOnly, session: { status: session.status, pending: session.pending } })

await until(() => notes.status === 'read_only', 'read_only after the first sync')
const connected = state()
const map = notes.doc.getMap('notes')
for (let i = 0; i < 3; i++) map.set(`kept-${i}`, `edit ${i}`)
await sleep(1000) // what the server would answer (nothing: the edits are not sent)
out({ event: 'read-only', connected, edited: state(), updatesAfterDenial, denials, sockets })
blockUntilGo()

mode = 'rw' // the back end grants write from now on; the next token reconnects the document
await until(() => notes.status === 'durable', 'durable with a read-write token')
const done = state()
await session.close()
out({ event: 'done', done, statuses, modes, sockets, updatesAfterDenial, errors: [...new Set(errors)] })
process.exit(0)
