// Idle clients: N peers spread over R rooms (client k joins room `${prefix}-${(first + k) % R}`),
// synced, then silent until the harness closes stdin.
// Usage: node idle.js --server URL --prefix P --rooms R --clients N [--first K] [--token T]
//                     [--parallel P] [--timeout S] [--hold S]
'use strict'
const { connectMany, parseArgs, emit, emitAndExit, nowMs, roomUrl, hardDeadline, waitForStop } = require('./peer')

async function main () {
  const a = parseArgs(process.argv.slice(2))
  const rooms = Number(a.rooms)
  const clients = Number(a.clients)
  const first = Number(a.first || 0)
  const timeout = Number(a.timeout || 300)
  const hold = Number(a.hold || 600)
  hardDeadline(timeout + hold)
  const urls = Array.from({ length: clients }, (_, k) => roomUrl(a.server, `${a.prefix}-${(first + k) % rooms}`, a.token))
  const start = nowMs()
  const { peers, errors } = await connectMany(urls, {
    parallel: Number(a.parallel || 100), timeoutMs: 60000, deadline: start + timeout * 1000
  })
  emit({ event: 'ready', synced: peers.length, errors: errors.slice(0, 5), error_count: errors.length, seconds: (nowMs() - start) / 1000 })
  // Optional commands on stdin (bench/idle_50k.py): `write` - the first peer of each room this
  // process holds pushes one entry to Y.Array `log`; `count` - how many peers hold at least one.
  require('readline').createInterface({ input: process.stdin }).on('line', (line) => {
    if (line === 'write') {
      const seen = new Set()
      let wrote = 0
      peers.forEach((p, k) => {
        const room = (first + k) % rooms
        if (!seen.has(room)) { seen.add(room); p.doc.getArray('log').push([{ room }]); wrote++ }
      })
      emit({ event: 'wrote', rooms: wrote })
    } else if (line === 'count') {
      const open = peers.filter((p) => p.ws.readyState === 1).length
      emit({ event: 'count', seen: peers.filter((p) => p.doc.getArray('log').length > 0).length, open, total: peers.length })
    }
  })
  await Promise.race([waitForStop(), new Promise((resolve) => setTimeout(resolve, hold * 1000))])
  const dropped = peers.filter((p) => p.ws.readyState !== 1).length
  await emit({ event: 'stopped', dropped })
  for (const p of peers) p.close()
  process.exit(0)
}
main().catch((err) => emitAndExit({ event: 'error', error: String(err.stack || err) }, 1))
