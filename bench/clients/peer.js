// A y-websocket protocol peer: a real Y.Doc synced over a real websocket with the y-protocols sync
// messages (step 1 / step 2 / update), the same bytes WebsocketProvider sends. It leaves out
// awareness on purpose: a thousand providers renewing presence every 15 s would measure awareness
// broadcast, not document relay, and would eat the two cores the servers are measured on.
'use strict'

const WebSocket = require('ws')
const Y = require('yjs')
const syncProtocol = require('y-protocols/sync')
const encoding = require('lib0/encoding')
const decoding = require('lib0/decoding')

const MESSAGE_SYNC = 0
const MESSAGE_AUTH = 2

/** Milliseconds on the machine-wide monotonic clock (comparable between processes on one host). */
const nowMs = () => Number(process.hrtime.bigint()) / 1e6

/** With BENCH_TIMELINE=1: `TL <ms> <event> <details>` lines on stderr (the cold-load timeline in
 * bench/RESULTS.md merges them with the server's); otherwise nothing. */
const timeline = process.env.BENCH_TIMELINE === '1'
  ? (event, details = '') => process.stderr.write(`TL ${nowMs().toFixed(3)} ${event} ${details}\n`)
  : () => {}

class Peer {
  /**
   * @param {string} url websocket URL (token in the query when the server needs one)
   * @param {{doc?: Y.Doc, timeoutMs?: number}} opts
   */
  constructor (url, { doc = new Y.Doc(), timeoutMs = 60000 } = {}) {
    this.url = url
    this.doc = doc
    this.timeoutMs = timeoutMs
    this.ws = null
    this.synced = false
    this.arrival = 0 // arrival time of the message being applied (read by observers of the doc)
    this.closeInfo = null
    this.applyRemote = true // a writer replaying prepared updates turns this off after sync
    this._onDocUpdate = (update, origin) => {
      if (origin === this || !this.ws || this.ws.readyState !== WebSocket.OPEN) return
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, MESSAGE_SYNC)
      syncProtocol.writeUpdate(encoder, update)
      this.ws.send(encoding.toUint8Array(encoder))
    }
    this.doc.on('update', this._onDocUpdate)
  }

  /** Resolves once the server's sync step 2 is applied; rejects if the socket closes first. */
  connect () {
    return new Promise((resolve, reject) => {
      let settled = false
      const settle = (err) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        if (err) reject(err); else resolve(this)
      }
      const timer = setTimeout(() => settle(new Error(`not synced within ${this.timeoutMs} ms`)), this.timeoutMs)
      const ws = new WebSocket(this.url, { perMessageDeflate: false })
      ws.binaryType = 'arraybuffer'
      this.ws = ws
      ws.on('open', () => {
        timeline('client_open')
        const encoder = encoding.createEncoder()
        encoding.writeVarUint(encoder, MESSAGE_SYNC)
        syncProtocol.writeSyncStep1(encoder, this.doc)
        ws.send(encoding.toUint8Array(encoder))
      })
      ws.on('message', (data) => {
        this.arrival = nowMs()
        timeline('client_message', `bytes=${data.byteLength}`)
        const decoder = decoding.createDecoder(new Uint8Array(data))
        const type = decoding.readVarUint(decoder)
        if (type === MESSAGE_SYNC) {
          if (!this.applyRemote && this.synced) return
          const encoder = encoding.createEncoder()
          encoding.writeVarUint(encoder, MESSAGE_SYNC)
          const syncType = syncProtocol.readSyncMessage(decoder, encoder, this.doc, this)
          if (encoding.length(encoder) > 1) ws.send(encoding.toUint8Array(encoder))
          timeline('client_applied', `type=${syncType}`)
          if (syncType === syncProtocol.messageYjsSyncStep2 && !this.synced) {
            this.synced = true
            settle(null)
          }
        } else if (type === MESSAGE_AUTH) {
          settle(new Error('permission denied by server'))
        } // awareness and anything else: ignored
      })
      ws.on('unexpected-response', (_req, res) => {
        settle(new Error(`HTTP ${res.statusCode} on upgrade`))
        ws.terminate()
      })
      ws.on('error', (err) => settle(err))
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() }
        settle(new Error(`closed ${code} ${reason.toString()} before sync`))
      })
    })
  }

  /** Send an already encoded protocol message as it is. */
  sendRaw (message) {
    this.ws.send(message)
  }

  close () {
    this.doc.off('update', this._onDocUpdate)
    if (this.ws) this.ws.terminate()
  }
}

/** Open `count` peers with at most `parallel` handshakes in flight; returns {peers, errors}. */
async function connectMany (urls, { parallel = 100, timeoutMs = 60000, makeDoc = () => new Y.Doc(), deadline = Infinity } = {}) {
  const peers = []
  const errors = []
  let next = 0
  const worker = async () => {
    while (next < urls.length && nowMs() < deadline) {
      const i = next++
      const peer = new Peer(urls[i], { doc: makeDoc(i), timeoutMs })
      try {
        await peer.connect()
        peers.push(peer)
      } catch (err) {
        errors.push(String(err.message || err))
        peer.close()
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, urls.length) }, worker))
  return { peers, errors }
}

/** Yjs updates turned into y-websocket sync-update messages, ready to send. */
function updateMessage (update) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SYNC)
  syncProtocol.writeUpdate(encoder, update)
  return encoding.toUint8Array(encoder)
}

/** Parse `--name value` pairs into an object of strings. */
function parseArgs (argv) {
  const out = {}
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--')) throw new Error(`bad argument ${argv[i]}`)
    out[argv[i].slice(2)] = argv[i + 1]
  }
  return out
}

/** One JSON object per line on stdout: the harness reads these. Resolves once the line is
 * flushed: process.exit() would otherwise cut a long line at the pipe's 64 KiB buffer. */
const emit = (obj) => new Promise((resolve) => process.stdout.write(JSON.stringify(obj) + '\n', resolve))

/** Write a last line, then exit. */
const emitAndExit = async (obj, code) => {
  await emit(obj)
  process.exit(code)
}

/** Build the URL of room `doc` under base `server` (e.g. ws://127.0.0.1:9/sync/bench) with a token. */
const roomUrl = (server, doc, token) => `${server}/${doc}` + (token ? `?token=${encodeURIComponent(token)}` : '')

/** Exit with an error line if the whole script outlives its time budget. */
function hardDeadline (seconds) {
  const t = setTimeout(() => {
    emitAndExit({ event: 'error', error: `script time budget of ${seconds}s exceeded` }, 3)
  }, seconds * 1000)
  t.unref()
}

/** Resolves when the harness closes our stdin (its "stop" signal) or on SIGTERM. */
const waitForStop = () => new Promise((resolve) => {
  process.stdin.on('end', resolve)
  process.stdin.on('close', resolve)
  process.stdin.resume()
  process.on('SIGTERM', resolve)
})

module.exports = {
  Peer, updateMessage, connectMany, parseArgs, emit, emitAndExit, nowMs, roomUrl, hardDeadline, waitForStop, timeline, Y }
