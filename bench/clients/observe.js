// Observers: N peers in one room, each recording when every entry {i} a writer pushes to the
// Y.Array `log` arrives (on the machine-wide monotonic clock the writer stamps its sends with);
// the harness joins arrivals to the writer's send times by i.
// Usage: node observe.js --server ws://127.0.0.1:P/sync/slug --doc D [--token T] --clients N
//                        --items M [--timeout S] [--parallel P]
'use strict'
const { connectMany, parseArgs, emit, emitAndExit, nowMs, roomUrl, hardDeadline, Y } = require('./peer')

async function main () {
  const a = parseArgs(process.argv.slice(2))
  const clients = Number(a.clients || 1)
  const items = Number(a.items)
  const timeout = Number(a.timeout || 120)
  hardDeadline(timeout + 10)
  const deadline = nowMs() + timeout * 1000
  const arrivals = [] // flat pairs: i, arrival time
  let complete = 0
  let firstArrival = Infinity
  let lastArrival = 0
  let finish
  const finished = new Promise((resolve) => { finish = resolve })
  const url = roomUrl(a.server, a.doc, a.token)
  const peersByDoc = new Map()
  const makeDoc = () => {
    const doc = new Y.Doc()
    let seen = 0
    doc.getArray('log').observe((event) => {
      const peer = peersByDoc.get(doc)
      const arrival = peer ? peer.arrival : nowMs()
      for (const d of event.changes.delta) {
        if (!d.insert) continue
        for (const item of d.insert) {
          if (item && typeof item.i === 'number') {
            arrivals.push(item.i, Math.round(arrival * 1000) / 1000)
            if (arrival < firstArrival) firstArrival = arrival
            if (arrival > lastArrival) lastArrival = arrival
            seen++
          }
        }
      }
      if (seen >= items && !doc._benchDone) {
        doc._benchDone = true
        if (++complete === clients) finish()
      }
    })
    return doc
  }
  const { peers, errors } = await connectMany(Array(clients).fill(url), {
    parallel: Number(a.parallel || 100), timeoutMs: timeout * 1000, makeDoc, deadline
  })
  for (const p of peers) peersByDoc.set(p.doc, p)
  emit({ event: 'ready', synced: peers.length, errors: errors.slice(0, 5), error_count: errors.length })
  if (peers.length === 0) await emitAndExit({ event: 'error', error: `no observer synced: ${errors[0]}` }, 2)
  const timer = setTimeout(finish, Math.max(0, deadline - nowMs()))
  await finished
  clearTimeout(timer)
  await emit({
    event: 'done', complete, clients: peers.length, received: arrivals.length / 2,
    first_arrival: firstArrival, last_arrival: lastArrival, arrivals
  })
  for (const p of peers) p.close()
  process.exit(0)
}
main().catch((err) => emitAndExit({ event: 'error', error: String(err.stack || err) }, 1))
