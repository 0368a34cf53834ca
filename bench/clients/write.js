// Writer: prepares `items` real Yjs updates on its own Y.Doc (one push to Y.Array `log` each: {i}
// or, with --blob-bytes, a binary blob), joins the room as a y-websocket peer, then sends them as
// sync-update messages and records the send time of each. Preparing first keeps the writer's own
// CRDT work out of the measured window; it ignores the server's echoes once synced.
// --rate 0 sends as fast as the socket takes them (yielding to the event loop every --batch);
// otherwise paced at --rate per second. With --verify 1 a second peer then joins and waits until it
// sees every entry (the server holds them). It stays connected until the harness closes stdin.
// Usage: node write.js --server URL --doc D [--token T] --items M [--rate R] [--batch B]
//                      [--blob-bytes N] [--verify 1] [--timeout S]
'use strict'
const { Peer, updateMessage, parseArgs, emit, emitAndExit, nowMs, roomUrl, hardDeadline, waitForStop, Y } = require('./peer')

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function drained (ws, deadline) {
  while (ws.bufferedAmount > 0 && nowMs() < deadline) await sleep(2)
}

function prepare (items, blobBytes) {
  const source = new Y.Doc()
  const log = source.getArray('log')
  const messages = []
  source.on('update', (update) => messages.push(updateMessage(update)))
  const blob = blobBytes ? new Uint8Array(blobBytes).map((_, i) => i % 251) : null
  for (let i = 0; i < items; i++) log.push([blob || { i }])
  return { messages, bytes: Y.encodeStateAsUpdate(source).length }
}

async function main () {
  const a = parseArgs(process.argv.slice(2))
  const items = Number(a.items)
  const rate = Number(a.rate || 0)
  const batch = Number(a.batch || 100)
  const timeout = Number(a.timeout || 120)
  hardDeadline(timeout + 30)
  const { messages, bytes } = prepare(items, Number(a['blob-bytes'] || 0))
  const deadline = nowMs() + timeout * 1000
  const url = roomUrl(a.server, a.doc, a.token)
  const peer = await new Peer(url, { timeoutMs: timeout * 1000 }).connect()
  peer.applyRemote = false
  emit({ event: 'start', t: nowMs() })
  const sends = []
  const first = nowMs()
  for (let i = 0; i < messages.length && nowMs() < deadline; i++) {
    if (peer.ws.readyState !== 1) throw new Error(`connection closed after ${i} items: ${JSON.stringify(peer.closeInfo)}`)
    sends.push(nowMs())
    peer.sendRaw(messages[i])
    if (rate > 0) {
      const wait = first + ((i + 1) * 1000) / rate - nowMs()
      if (wait > 0) await sleep(wait)
    } else if ((i + 1) % batch === 0) {
      await new Promise((resolve) => setImmediate(resolve))
      if (peer.ws.bufferedAmount > 4 * 1024 * 1024) await drained(peer.ws, deadline)
    }
  }
  await drained(peer.ws, deadline)
  const last = nowMs()
  let verified = null
  if (a.verify === '1') {
    verified = false
    while (!verified && nowMs() < deadline) {
      const check = new Peer(url, { timeoutMs: Math.max(1000, deadline - nowMs()) })
      try {
        await check.connect()
        verified = check.doc.getArray('log').length >= items
      } catch (err) {
        emit({ event: 'verify_retry', error: String(err.message || err) })
      }
      check.close()
      if (!verified) await sleep(200)
    }
  }
  await emit({ event: 'done', sent: sends.length, first, last, verified, bytes, sends: a.verify === '1' ? [] : sends })
  await Promise.race([waitForStop(), sleep(Math.max(0, deadline - nowMs()))])
  peer.close()
  process.exit(0)
}
main().catch((err) => emitAndExit({ event: 'error', error: String(err.stack || err) }, 1))
