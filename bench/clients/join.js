// Joiners: N peers that open one room at the same instant (after the harness writes "go" on stdin)
// and each record when its document is synced and holds `items` entries of Y.Array `log`.
// A peer is closed and its document dropped as soon as it is synced, to keep this process small.
// Usage: node join.js --server URL --doc D [--token T] --clients N --items M [--timeout S]
'use strict'
const readline = require('readline')
const { Peer, parseArgs, emit, emitAndExit, nowMs, roomUrl, hardDeadline, timeline } = require('./peer')

async function joinOne (url, items, timeoutMs) {
  const start = nowMs()
  const peer = new Peer(url, { timeoutMs })
  try {
    await peer.connect()
    const log = peer.doc.getArray('log')
    const deadline = start + timeoutMs
    while (log.length < items && nowMs() < deadline) await new Promise((resolve) => setTimeout(resolve, 5))
    if (log.length < items) throw new Error(`synced with ${log.length}/${items} entries`)
    const synced = nowMs()
    timeline('client_synced')
    return { start, synced }
  } finally {
    peer.close()
    peer.doc.destroy()
  }
}

async function main () {
  const a = parseArgs(process.argv.slice(2))
  const clients = Number(a.clients || 1)
  const items = Number(a.items || 0)
  const timeout = Number(a.timeout || 120)
  hardDeadline(timeout + 60)
  const url = roomUrl(a.server, a.doc, a.token)
  emit({ event: 'ready' })
  const rl = readline.createInterface({ input: process.stdin })
  await new Promise((resolve) => rl.once('line', resolve))
  const t0 = nowMs()
  timeline('client_go')
  const results = await Promise.allSettled(Array.from({ length: clients }, () => joinOne(url, items, timeout * 1000)))
  const synced = results.filter((r) => r.status === 'fulfilled').map((r) => r.value.synced)
  const errors = results.filter((r) => r.status === 'rejected').map((r) => String(r.reason.message || r.reason))
  await emit({ event: 'done', t0, synced, errors: errors.slice(0, 5), error_count: errors.length })
  rl.close()
  process.exit(0)
}
main().catch((err) => emitAndExit({ event: 'error', error: String(err.stack || err) }, 1))
