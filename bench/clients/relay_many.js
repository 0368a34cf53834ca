// Many rooms at once: `rooms` rooms, one writer and one reader peer each (all in this process),
// the writers' updates prepared first (one Y.Array push of {i} each), then every writer sends its
// `items` updates at once, flat out (yielding every --batch). Reports when the first was sent and
// when the last reader had every entry: aggregate relay = rooms * items / that window.
// It starts sending on a "go" line on stdin, after its "ready" line (every peer synced).
// Usage: node relay_many.js --server URL --token T --rooms R --items M [--batch B] [--prefix P] [--timeout S]
'use strict'
const readline = require('readline')
const { Peer, updateMessage, parseArgs, emit, emitAndExit, nowMs, roomUrl, hardDeadline, Y } = require('./peer')

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function prepare (items) {
  const source = new Y.Doc()
  const log = source.getArray('log')
  const messages = []
  source.on('update', (update) => messages.push(updateMessage(update)))
  for (let i = 0; i < items; i++) log.push([{ i }])
  return messages
}

async function main () {
  const a = parseArgs(process.argv.slice(2))
  const rooms = Number(a.rooms || 50)
  const items = Number(a.items || 1000)
  const batch = Number(a.batch || 50)
  const timeout = Number(a.timeout || 120)
  const prefix = a.prefix || 'many'
  hardDeadline(timeout + 60)
  const docs = Array.from({ length: rooms }, (_, r) => `${prefix}-${r}`)
  const messages = docs.map(() => prepare(items))
  const readers = []
  const writers = []
  for (const doc of docs) {
    const reader = new Peer(roomUrl(a.server, doc, a.token), { timeoutMs: timeout * 1000 })
    await reader.connect()
    readers.push(reader)
    const writer = new Peer(roomUrl(a.server, doc, a.token), { timeoutMs: timeout * 1000 })
    writer.applyRemote = false
    await writer.connect()
    writers.push(writer)
  }
  await sleep(500)
  await emit({ event: 'ready' })
  const rl = readline.createInterface({ input: process.stdin })
  await new Promise((resolve) => rl.once('line', resolve))
  rl.close()
  const t0 = nowMs()
  await Promise.all(writers.map(async (w, r) => {
    const own = messages[r]
    for (let i = 0; i < own.length; i++) {
      w.sendRaw(own[i])
      if (i % batch === batch - 1) await sleep(0)
    }
  }))
  const deadline = t0 + timeout * 1000
  const logs = readers.map((p) => p.doc.getArray('log'))
  while (logs.some((l) => l.length < items) && nowMs() < deadline) await sleep(5)
  const done = nowMs()
  const delivered = logs.reduce((n, l) => n + l.length, 0)
  for (const p of [...readers, ...writers]) p.close()
  await emitAndExit({ event: 'done', t0, done, delivered, expected: rooms * items }, delivered === rooms * items ? 0 : 1)
}
main().catch((err) => emitAndExit({ event: 'error', error: String(err.stack || err) }, 1))
