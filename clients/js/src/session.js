// connect(): a session of one customer's app with a sync server. It holds the credential (asking
// the app's getToken() before the current token expires and handing the new one to every open
// socket in band, REFRESH), opens documents by name (each kept on the device and synced over its
// own socket, document.js), resumes the documents a previous run left with pending changes, and
// sums their statuses: the session is `refused` if any document is, else `offline` if any is,
// else `read_only` if a read-only document holds edits (they cannot become durable with this
// credential; one without edits counts as durable), else `pending` if any is, else `durable`.
import { Emitter } from './emitter.js'
import { normalizeToken, renewalDelay } from './tokens.js'
import { SyncedDoc } from './document.js'
import { Tracker } from './tracker.js'

/**
 * @typedef {object} ConnectOptions
 * @property {string} url the server: `https://sync.example.com` or `wss://...` (`/sync/{customer}/{doc}` is added)
 * @property {string} customer the customer's slug
 * @property {() => Promise<import('./tokens.js').TokenResult>} getToken a sync token from the app's back end
 *   (POST /api/v1/sync-tokens); called at start, before each token expires, and after a 4401. A rejection
 *   means "not now" (retried with backoff).
 * @property {import('./storage.js').Storage | null} [storage] where documents are kept on the device
 *   (fileStorage in Node, indexeddbStorage in browsers, blobStorage over your own bytes); null: nowhere
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (default globalThis.WebSocket; Node 18-21: `ws`)
 * @property {'query' | 'protocol'} [tokenIn] how the token travels: a Sec-WebSocket-Protocol entry
 *   (default: kept out of URLs, access logs and browser consoles) or `?token=`
 * @property {boolean} [resume] open the documents the store holds with pending changes (default true)
 * @property {boolean} [online] start connected (default true); see disconnect()/connect()
 * @property {{ baseMs?: number, maxMs?: number, random?: () => number }} [backoff] reconnection delays (full jitter)
 * @property {() => number} [clock] epoch ms for fixes recorded without a time (default Date.now)
 */

/**
 * @typedef {{ status: import('./document.js').SyncStatus, pending: number }} SessionStatus
 * @typedef {{ status: SessionStatus, durable: SessionStatus, refused: import('./document.js').Refusal & { doc: string },
 *   error: Error, open: SyncedDoc }} SessionEvents
 */

export class Session {
  /** @param {ConnectOptions} options */
  constructor (options) {
    const { url, customer, getToken } = options
    if (typeof url !== 'string' || !/^(wss?|https?):\/\//.test(url)) throw new TypeError('url: ws(s):// or http(s):// address of the server')
    if (typeof customer !== 'string' || !customer) throw new TypeError('customer: the customer slug')
    if (typeof getToken !== 'function') throw new TypeError('getToken: a function resolving to a sync token')
    const WS = options.WebSocket || /** @type {any} */ (globalThis).WebSocket
    if (typeof WS !== 'function') throw new TypeError('no WebSocket here: pass { WebSocket } (Node < 22: import WebSocket from "ws")')
    this.base = url.replace(/^http/, 'ws').replace(/\/+$/, '')
    this.customer = customer
    this.storage = options.storage === undefined ? null : options.storage
    this.backoff = options.backoff || {}
    this.clock = options.clock || Date.now
    this.online = options.online !== false
    this._getToken = getToken
    this._WebSocket = WS
    this._tokenIn = options.tokenIn || 'protocol'
    /** @type {{ token: string, expiresAt: number | null } | null} */
    this._token = null
    /** @type {Promise<string> | null} */
    this._fetching = null
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._renewTimer = null
    this._renewFailures = 0
    /** @type {Map<string, SyncedDoc>} */
    this.docs = new Map()
    /** @type {Map<string, Tracker>} */
    this._trackers = new Map()
    /** @type {Emitter<SessionEvents>} */
    this._events = new Emitter()
    /** @type {import('./document.js').SyncStatus} */
    this.status = 'durable'
    this.pending = 0
    this._closed = false
    // the network is back: retry now rather than at the end of a backoff (refusals stay refused)
    this._onOnline = () => { if (this.online) for (const doc of this.docs.values()) if (!doc.refusal) doc._reconnect() }
    if (typeof globalThis.addEventListener === 'function' && typeof navigator !== 'undefined') globalThis.addEventListener('online', this._onOnline)
    /** Resolves once the documents with pending changes from an earlier run are open. */
    this.whenResumed = options.resume === false || !this.storage ? Promise.resolve() : this._resume()
  }

  /**
   * @template {keyof SessionEvents} K
   * @param {K} event
   * @param {(value: SessionEvents[K]) => void} handler
   */
  on (event, handler) { return this._events.on(event, handler) }

  /**
   * The document `name` (`fleet`, `dispatch`, `tracks/{vehicle}/{YYYY-MM-DD}`...), opened once per session.
   * @param {string} name
   */
  open (name) {
    if (this._closed) throw new Error('session closed')
    if (typeof name !== 'string' || !name || name.length > 512) throw new TypeError('a document name of 1-512 characters')
    let doc = this.docs.get(name)
    if (!doc) {
      doc = new SyncedDoc(this, name)
      this.docs.set(name, doc)
      doc.on('refused', (r) => this._events.emit('refused', r))
      doc.on('error', (e) => this._events.emit('error', e))
      this._docChanged()
      this._events.emit('open', doc)
    }
    return doc
  }

  /**
   * Records GPS fixes of one vehicle into its track documents (one per UTC day).
   * @param {string} vehicleId the vehicle's id or identifier
   * @param {{ clock?: () => number }} [options]
   */
  tracker (vehicleId, options = {}) {
    let t = this._trackers.get(vehicleId)
    if (!t) this._trackers.set(vehicleId, (t = new Tracker(this, vehicleId, { clock: options.clock || this.clock })))
    return t
  }

  /** Stop syncing (the network is gone, or the app asks): documents keep working on the device. */
  disconnect () {
    this.online = false
    for (const doc of this.docs.values()) doc._disconnect()
  }

  /** (Re)connect every document now, also after a refusal (a new sign-in). */
  connect () {
    if (this._closed) return
    this.online = true
    for (const doc of this.docs.values()) doc._reconnect()
  }

  /** Resolves when every open document is durable. */
  async whenDurable () {
    await this.whenResumed
    await Promise.all([...this.docs.values()].map((d) => d.whenDurable()))
  }

  /** Close every document (what is not on the device yet is written) and stop. */
  async close () {
    if (this._closed) return
    this._closed = true
    if (this._renewTimer) clearTimeout(this._renewTimer)
    if (typeof globalThis.removeEventListener === 'function') globalThis.removeEventListener('online', this._onOnline)
    await this.whenResumed.catch(() => {})
    await Promise.all([...this.docs.values()].map((d) => d.close()))
  }

  async _resume () {
    if (!this.storage) return
    const kept = await this.storage.list()
    const prefix = this._storageName('')
    for (const { name, meta } of kept) {
      if (this._closed) return
      if (name.startsWith(prefix) && meta && meta.pending > 0) await this.open(name.slice(prefix.length)).whenLoaded
    }
  }

  /** @param {string} name */
  _storageName (name) { return `${this.customer}/${name}` }

  _tokenValue () { return this._token ? this._token.token : null }

  /** A token valid for a few more seconds: the current one, or the app's next. */
  async _currentToken () {
    const t = this._token
    if (t && (t.expiresAt === null || t.expiresAt - Date.now() > 2000)) return t.token
    return this._fetch()
  }

  /** @param {string | null} token a token the server answered 4401 to: ask the app for another */
  _invalidate (token) {
    if (this._token && this._token.token === token) this._token = null
  }

  _fetch () {
    if (!this._fetching) {
      this._fetching = (async () => {
        try {
          const got = normalizeToken(await this._getToken())
          this._token = got
          this._renewFailures = 0
          this._scheduleRenewal()
          return got.token
        } finally {
          this._fetching = null
        }
      })()
    }
    return this._fetching
  }

  _scheduleRenewal () {
    if (this._renewTimer) clearTimeout(this._renewTimer)
    this._renewTimer = null
    const t = this._token
    if (!t || t.expiresAt === null || this._closed) return
    // at least a second apart (the server takes one REFRESH a second per socket)
    this._renewTimer = setTimeout(() => this._renew(), Math.max(1000, renewalDelay(Date.now(), t.expiresAt)))
  }

  async _renew () {
    this._renewTimer = null
    if (this._closed) return
    // only for open sockets: offline, the next connection asks for a token when it needs one
    if (![...this.docs.values()].some((d) => d._ws && d._ws.readyState === 1)) return
    try {
      const token = await this._fetch()
      for (const doc of this.docs.values()) doc._refresh(token)
    } catch (err) {
      this._events.emit('error', /** @type {Error} */ (err))
      // try again soon, before the current token runs out (a socket past it reconnects anyway)
      const wait = Math.min(30000, 1000 * 2 ** this._renewFailures++)
      this._renewTimer = setTimeout(() => this._renew(), wait)
    }
  }

  /**
   * @param {string} name
   * @param {string} token
   * @returns {WebSocket}
   */
  _open (name, token) {
    const path = name.split('/').map(encodeURIComponent).join('/')
    const url = `${this.base}/sync/${encodeURIComponent(this.customer)}/${path}`
    if (this._tokenIn === 'protocol') return new this._WebSocket(`${url}?ack=1`, [token])
    return new this._WebSocket(`${url}?ack=1&token=${encodeURIComponent(token)}`)
  }

  /** @param {SyncedDoc} doc */
  _forget (doc) {
    if (this.docs.get(doc.name) === doc) this.docs.delete(doc.name)
    this._docChanged()
  }

  _docChanged () {
    let pending = 0
    let refused = false
    let offline = false
    let readOnly = false
    for (const d of this.docs.values()) {
      pending += d.pending
      refused = refused || d.status === 'refused'
      offline = offline || d.status === 'offline'
      readOnly = readOnly || (d.status === 'read_only' && d.pending > 0)
    }
    /** @type {import('./document.js').SyncStatus} */
    const status = refused ? 'refused' : offline ? 'offline' : readOnly ? 'read_only' : pending > 0 ? 'pending' : 'durable'
    if (status === this.status && pending === this.pending) return
    const wasDurable = this.status === 'durable'
    this.status = status
    this.pending = pending
    this._events.emit('status', { status, pending })
    if (status === 'durable' && !wasDurable) this._events.emit('durable', { status, pending })
  }
}

/**
 * @param {ConnectOptions} options
 * @returns {Session}
 */
export function connect (options) {
  return new Session(options)
}
