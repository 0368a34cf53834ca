// One document of a session: a Y.Doc kept on the device (the session's Storage) and synced over
// its own socket (`/sync/{customer}/{doc}?ack=1`), with its sync status:
//   offline   not synced with the server right now (no network, connecting, backing off)
//   pending   synced, but `pending` local changes are not durable on the server yet
//   durable   every local change is committed on the server (DURABLE acknowledged it)
//   read_only synced, but the server denied this socket's edits (a read-only credential): local
//             changes stay on the device and in `pending`, which no DURABLE lowers; they are not
//             sent on that socket (the server drops them). It lasts until a later socket's DURABLE
//             shows the credential may write (a new token reconnects: its sync step 2 carries them)
//   refused   the server refused the credential or the document (4401 after a fresh token,
//             4403, 4400, 4413): no more retries until session.connect()
// `pending` counts local transactions (Y.Doc updates not applied by the server or the store) that
// no DURABLE covers yet; it is kept in the store, so a restart still knows them.
import * as Y from 'yjs'
import { Awareness, applyAwarenessUpdate, removeAwarenessStates } from 'y-protocols/awareness'
import * as wire from './wire.js'
import { Emitter } from './emitter.js'
import { backoffDelay } from './backoff.js'
import { STORE } from './storage.js'

/** The client id of the server's own awareness state (materialization feedback in track rooms). */
export const SERVER_CLIENT_ID = Number.MAX_SAFE_INTEGER
const OPEN = 1
const IDLE_PING_MS = 15000
const DEAD_AFTER_MS = 45000

/**
 * @typedef {'offline' | 'pending' | 'durable' | 'read_only' | 'refused'} SyncStatus
 * @typedef {{ doc: string, status: SyncStatus, pending: number }} DocStatus
 * @typedef {{ code: number, reason: string }} Refusal
 * @typedef {{
 *   status: DocStatus, durable: DocStatus, synced: DocStatus, refused: Refusal & { doc: string },
 *   denied: { doc: string, reason: string }, error: Error
 * }} DocEvents
 */

export class SyncedDoc {
  /**
   * @param {import('./session.js').Session} session
   * @param {string} name
   */
  constructor (session, name) {
    this.session = session
    this.name = name
    this.doc = new Y.Doc()
    this.awareness = new Awareness(this.doc)
    /** @type {SyncStatus} */
    this.status = 'offline'
    this.pending = 0
    this.synced = false
    /** true once the server answered an edit with permission denied (a read-only credential),
     * until a DURABLE on a later socket (status `read_only` while synced) */
    this.readOnly = false
    /** @type {WebSocket | null} the socket whose edits the server denied: nothing more is sent on it */
    this._deniedOn = null
    /** @type {Refusal | null} */
    this.refusal = null
    /** @type {Emitter<DocEvents>} */
    this._events = new Emitter()
    this._local = 0 // local changes counted so far (restored from the store first)
    this._durable = 0 // of those, covered by a DURABLE
    /** @type {number[]} for each update message sent on this socket: the local changes it completes */
    this._sent = []
    this._sentBase = 0 // messages already acknowledged and dropped from _sent
    this._step2Sent = false
    /** @type {WebSocket | null} */
    this._ws = null
    this._connecting = false
    /** @type {string | null} */
    this._token = null // what the open socket authenticated with
    /** @type {string | null} */
    this._refreshing = null
    this._attempt = 0
    this._authRetried = false
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._retryTimer = null
    /** @type {ReturnType<typeof setInterval> | null} */
    this._pingTimer = null
    this._lastMessage = 0
    this._closed = false
    /** @type {import('./storage.js').Binding | null} */
    this._binding = null
    this._onUpdate = this._onUpdate.bind(this)
    this._onAwareness = this._onAwareness.bind(this)
    this.doc.on('update', this._onUpdate)
    this.awareness.on('update', this._onAwareness)
    /** Resolves once what the device kept of the document is loaded. */
    this.whenLoaded = this._load()
  }

  /**
   * @template {keyof DocEvents} K
   * @param {K} event
   * @param {(value: DocEvents[K]) => void} handler
   */
  on (event, handler) { return this._events.on(event, handler) }

  /** Resolves when every local change so far is durable on the server. */
  whenDurable () {
    if (this.pending === 0 && this.synced) return Promise.resolve()
    return new Promise((resolve) => { const off = this.on('durable', () => { off(); resolve(undefined) }) })
  }

  async _load () {
    const storage = this.session.storage
    if (storage) {
      try {
        this._binding = await storage.bind(this.session._storageName(this.name), this.doc)
        this._local += (this._binding.meta && this._binding.meta.pending) || 0
        this._saveMeta() // edits made while it loaded count too
      } catch (err) {
        this._events.emit('error', /** @type {Error} */ (err))
      }
    }
    this._update()
    if (!this._closed) this._connect()
  }

  /**
   * @param {Uint8Array} update
   * @param {any} origin
   */
  _onUpdate (update, origin) {
    if (origin === this || (origin && origin[STORE])) return // from the server, or loaded from the device
    this._local++
    if (this._ws && this._ws.readyState === OPEN && this._ws !== this._deniedOn) {
      this._ws.send(wire.updateFrame(update))
      // before our sync step 2 went out, earlier offline changes are not in any message yet
      this._sent.push(this._step2Sent ? this._local : this._completed())
    }
    this._saveMeta()
    this._update()
  }

  _completed () {
    return this._sent.length ? this._sent[this._sent.length - 1] : this._durable
  }

  /**
   * @param {{ added: number[], updated: number[], removed: number[] }} changes
   * @param {any} origin
   */
  _onAwareness ({ added, updated, removed }, origin) {
    if (origin === this || !this._ws || this._ws.readyState !== OPEN) return
    const mine = added.concat(updated, removed).filter((id) => id === this.doc.clientID)
    if (mine.length) this._ws.send(wire.awarenessFrame(this.awareness, mine))
  }

  _saveMeta () {
    if (this._binding) this._binding.setMeta({ pending: this._local - this._durable })
  }

  _update () {
    const pending = this._local - this._durable
    /** @type {SyncStatus} */
    const status = this.refusal ? 'refused' : !this.synced ? 'offline' : this.readOnly ? 'read_only' : pending > 0 ? 'pending' : 'durable'
    if (status === this.status && pending === this.pending) return
    const wasDurable = this.status === 'durable'
    this.status = status
    this.pending = pending
    const value = { doc: this.name, status, pending }
    this._events.emit('status', value)
    if (status === 'durable' && !wasDurable) this._events.emit('durable', value)
    this.session._docChanged()
  }

  async _connect () {
    if (this._closed || this._ws || this._connecting || this.refusal || !this.session.online) return
    if (this._retryTimer) { clearTimeout(this._retryTimer); this._retryTimer = null }
    this._connecting = true
    let token
    try {
      token = await this.session._currentToken()
    } catch (err) {
      this._connecting = false
      this._events.emit('error', /** @type {Error} */ (err))
      return this._retry()
    }
    this._connecting = false
    if (this._closed || this._ws || this.refusal || !this.session.online) return
    let ws
    try {
      ws = this.session._open(this.name, token)
    } catch (err) {
      this._events.emit('error', /** @type {Error} */ (err))
      return this._retry()
    }
    ws.binaryType = 'arraybuffer'
    this._ws = ws
    this._token = token
    this._sent = []
    this._sentBase = 0
    this._step2Sent = false
    ws.onopen = () => this._opened(ws)
    ws.onmessage = (event) => this._message(ws, event)
    ws.onclose = (event) => this._closedSocket(ws, event)
    ws.onerror = () => { /* onclose follows */ }
  }

  /** @param {WebSocket} ws */
  _opened (ws) {
    if (ws !== this._ws) return
    this._lastMessage = Date.now()
    ws.send(wire.step1Frame(this.doc))
    // the others' presence comes again with the room's; forget their clocks (we dropped their states
    // at disconnect) and announce ours past the removal the server sent when our last socket ended
    for (const id of [...this.awareness.meta.keys()]) {
      if (id !== this.doc.clientID && !this.awareness.states.has(id)) this.awareness.meta.delete(id)
    }
    const mine = this.awareness.getLocalState()
    if (mine !== null) {
      this.awareness.setLocalState({ ...mine })
      this.awareness.setLocalState({ ...mine })
    }
    this._pingTimer = setInterval(() => this._idle(ws), IDLE_PING_MS)
  }

  /** @param {WebSocket} ws */
  _idle (ws) {
    if (ws !== this._ws || ws.readyState !== OPEN) return
    const quiet = Date.now() - this._lastMessage
    if (quiet > DEAD_AFTER_MS) ws.close() // a half-open connection: reconnect
    else if (quiet > IDLE_PING_MS) ws.send(new Uint8Array([wire.QUERY_AWARENESS])) // answered with the room's presence
  }

  /**
   * @param {WebSocket} ws
   * @param {MessageEvent} event
   */
  _message (ws, event) {
    if (ws !== this._ws) return
    this._lastMessage = Date.now()
    if (!(event.data instanceof ArrayBuffer)) return // the server sends binary frames only
    let msg
    try {
      msg = wire.readFrame(new Uint8Array(event.data), this.doc, this)
    } catch (err) {
      // a frame this client cannot read: start again on a fresh socket (the sync repairs the rest)
      this._events.emit('error', /** @type {Error} */ (err))
      ws.close()
      return
    }
    switch (msg.type) {
      case 'sync':
        if (msg.reply) {
          ws.send(msg.reply) // our sync step 2: everything the server lacks, i.e. every local change
          this._step2Sent = true
          this._sent.push(this._local)
        }
        if (msg.step === wire.STEP2 && !this.synced) {
          this.synced = true
          this._attempt = 0
          this._authRetried = false
          this._update()
          this._events.emit('synced', { doc: this.name, status: this.status, pending: this.pending })
        }
        break
      case 'awareness':
        applyAwarenessUpdate(this.awareness, msg.update, this)
        break
      case 'query-awareness':
        ws.send(wire.awarenessFrame(this.awareness, [...this.awareness.getStates().keys()].filter((id) => id !== SERVER_CLIENT_ID)))
        break
      case 'denied':
        // the server dropped this update and drops every later one of this socket, uncounted
        this.readOnly = true
        this._deniedOn = ws
        this._update()
        this._events.emit('denied', { doc: this.name, reason: msg.reason })
        break
      case 'refreshed':
        if (this._refreshing) this._token = this._refreshing
        this._refreshing = null
        break
      case 'refresh-refused':
        // the socket keeps its old token; when that expires (4401) we reconnect with the new one
        this._refreshing = null
        this._events.emit('error', new Error(`token refresh refused: ${msg.reason}`))
        break
      case 'durable':
        if (ws !== this._deniedOn) this.readOnly = false // a socket after the denied one writes
        this._acknowledged(msg.count)
        this._update()
        break
    }
  }

  /** @param {number} count update messages of this socket now committed on the server */
  _acknowledged (count) {
    const index = count - this._sentBase - 1
    if (index < 0 || index >= this._sent.length) return
    const completed = this._sent[index]
    this._sent.splice(0, index + 1)
    this._sentBase = count
    if (completed > this._durable) {
      this._durable = completed
      this._saveMeta()
      this._update()
    }
  }

  /**
   * @param {WebSocket} ws
   * @param {CloseEvent} event
   */
  _closedSocket (ws, event) {
    if (ws !== this._ws) return
    this._ws = null
    this._refreshing = null
    if (this._pingTimer) { clearInterval(this._pingTimer); this._pingTimer = null }
    this.synced = false
    this._sent = []
    const others = [...this.awareness.getStates().keys()].filter((id) => id !== this.doc.clientID)
    removeAwarenessStates(this.awareness, others, this)
    this._update()
    if (this._closed || !this.session.online) return
    const { code, reason } = event
    if (code === 4401) {
      // expired or revoked: a token newer than the socket's is tried at once; otherwise ask the app
      // for a fresh one, once: the same answer again is a refusal
      if (this.session._tokenValue() !== this._token) return this._retry(0)
      if (!this._authRetried) {
        this._authRetried = true
        this.session._invalidate(this._token)
        return this._retry(0)
      }
      return this._refuse(code, reason)
    }
    if (code >= 4400 && code < 4500) return this._refuse(code, reason) // final: retrying sends the same again
    this._retry()
  }

  /** @param {number} [delay] */
  _retry (delay) {
    if (this._closed || this.refusal || this._retryTimer || !this.session.online) return
    const ms = delay !== undefined ? delay : backoffDelay(this._attempt++, this.session.backoff)
    this._retryTimer = setTimeout(() => { this._retryTimer = null; this._connect() }, ms)
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  _refuse (code, reason) {
    this.refusal = { code, reason: reason || '' }
    this._update()
    this._events.emit('refused', { doc: this.name, code, reason: reason || '' })
  }

  /** @param {string} token a newer token: presented in band on the open socket (REFRESH) */
  _refresh (token) {
    const ws = this._ws
    if (!ws || ws.readyState !== OPEN || token === this._token) return
    // a denied socket stays mute: the new token (it may write) gets a socket of its own, whose
    // sync step 2 carries the edits kept meanwhile, counted afresh for DURABLE
    if (ws === this._deniedOn) return ws.close(1000)
    this._refreshing = token
    ws.send(wire.refreshFrame(token))
  }

  /** Go offline (keeps editing locally). */
  _disconnect () {
    if (this._retryTimer) { clearTimeout(this._retryTimer); this._retryTimer = null }
    this._attempt = 0
    if (this._ws) this._ws.close(1000)
  }

  /** Try again now (after session.connect(): also after a refusal). */
  _reconnect () {
    this.refusal = null
    this._attempt = 0
    this._authRetried = false
    this._update()
    this._connect()
  }

  /** Stop syncing this document and write what is not yet on the device. */
  async close () {
    if (this._closed) return
    this._closed = true
    this.session._forget(this)
    this._disconnect()
    await this.whenLoaded
    if (this._binding) await this._binding.destroy()
    this.awareness.destroy()
  }
}
