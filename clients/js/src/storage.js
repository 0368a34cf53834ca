// Local persistence of documents: the Storage interface the session uses, a memory store, and
// `blobStorage(adapter)`, which keeps each document as an append-only log of Yjs updates in any
// byte store (Node files: ./node.js fileStorage; React Native / Capacitor: an adapter over their
// file or key-value APIs). Browsers: ./indexeddb.js (y-indexeddb).
//
// A document's log: frames `varUint length, bytes` (a Yjs update each), appended in batches
// (every `flushMs`) and rewritten as one merged update once it holds `compactAfter` frames. A
// frame cut short by a crash is ignored at load. Beside it, a small JSON record (`meta`): how
// many local changes are not durable on the server yet (`pending`), so a restart knows what
// still has to go out.
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'

/**
 * @typedef {{ pending: number }} DocMeta
 *
 * @typedef {object} Binding what a storage keeps of one open document (updates the store applies to
 *   the document carry a transaction origin with `[STORE]: true`: they are never counted as local changes)
 * @property {DocMeta | null} meta the record saved with the document, null for a new one
 * @property {(meta: DocMeta) => void} setMeta
 * @property {() => Promise<void>} flush everything so far written
 * @property {() => Promise<void>} destroy flush and stop storing
 *
 * @typedef {object} Storage
 * @property {(name: string, doc: Y.Doc) => Promise<Binding>} bind load what is kept of `name` into `doc`, then keep its updates
 * @property {() => Promise<Array<{ name: string, meta: DocMeta | null }>>} list the documents kept
 * @property {(name: string) => Promise<void>} remove forget a document
 *
 * @typedef {object} BlobAdapter a byte store (keys are short ASCII strings)
 * @property {(key: string) => Promise<Uint8Array | null>} read
 * @property {(key: string, bytes: Uint8Array) => Promise<void>} write replace (atomically where it can)
 * @property {(key: string, bytes: Uint8Array) => Promise<void>} [append] add at the end (read + write when absent)
 * @property {(key: string) => Promise<void>} remove
 * @property {() => Promise<string[]>} keys
 */

/** Marks the transaction origin of updates a store applied (see Binding). */
export const STORE = Symbol.for('webhost-sync.store')
const LOG = 'log.'
const META = 'meta.'

/** @param {string} name */
export const keyOf = (name) => encodeURIComponent(name).replace(/\./g, '%2E')

/** @param {Uint8Array[]} updates */
function frames (updates) {
  const e = encoding.createEncoder()
  for (const u of updates) encoding.writeVarUint8Array(e, u)
  return encoding.toUint8Array(e)
}

/** @param {Uint8Array} bytes */
export function readLog (bytes) {
  const updates = []
  const d = decoding.createDecoder(bytes)
  try {
    while (decoding.hasContent(d)) {
      const len = decoding.readVarUint(d)
      if (d.pos + len > bytes.length) break // cut short by a crash
      updates.push(decoding.readUint8Array(d, len))
    }
  } catch { /* a torn varint at the end */ }
  return updates
}

/**
 * @param {BlobAdapter} adapter
 * @param {{ flushMs?: number, compactAfter?: number }} [options]
 * @returns {Storage}
 */
export function blobStorage (adapter, { flushMs = 50, compactAfter = 500 } = {}) {
  const append = adapter.append
    ? adapter.append.bind(adapter)
    : async (/** @type {string} */ key, /** @type {Uint8Array} */ bytes) => {
      const old = (await adapter.read(key)) || new Uint8Array(0)
      const both = new Uint8Array(old.length + bytes.length)
      both.set(old)
      both.set(bytes, old.length)
      await adapter.write(key, both)
    }
  const readMeta = async (/** @type {string} */ key) => {
    const raw = await adapter.read(META + key)
    if (!raw) return null
    try { return JSON.parse(new TextDecoder().decode(raw)) } catch { return null }
  }
  return {
    async bind (name, doc) {
      const key = keyOf(name)
      const origin = { [STORE]: true, name }
      /** @type {Uint8Array[]} */
      let queue = []
      /** @type {DocMeta | null} */
      let metaQueued = null
      /** @type {ReturnType<typeof setTimeout> | null} */
      let timer = null
      let chain = Promise.resolve()
      let stopped = false
      let count = 0
      // registered before the first await: an edit made while the log loads is kept too
      const onUpdate = (/** @type {Uint8Array} */ update, /** @type {any} */ o) => {
        if (o === origin) return
        queue.push(update)
        schedule()
      }
      doc.on('update', onUpdate)
      const stored = await adapter.read(LOG + key)
      if (stored && stored.length) {
        const updates = readLog(stored)
        count = updates.length
        if (updates.length) Y.applyUpdate(doc, Y.mergeUpdates(updates), origin)
      }
      const meta = await readMeta(key)
      async function write () {
        timer = null
        const batch = queue
        const m = metaQueued
        queue = []
        metaQueued = null
        if (batch.length) {
          if (count + batch.length > compactAfter) {
            await adapter.write(LOG + key, frames([Y.encodeStateAsUpdate(doc)]))
            count = 1
          } else {
            await append(LOG + key, frames(batch))
            count += batch.length
          }
        }
        if (m) await adapter.write(META + key, new TextEncoder().encode(JSON.stringify(m)))
      }
      function schedule () {
        if (timer === null && !stopped) timer = setTimeout(() => { chain = chain.then(write, write) }, flushMs)
      }
      if (queue.length) schedule()
      const flush = async () => {
        if (timer !== null) { clearTimeout(timer); timer = null; chain = chain.then(write, write) }
        await chain
      }
      return {
        meta,
        setMeta (m) { metaQueued = { ...m }; schedule() },
        flush,
        async destroy () {
          doc.off('update', onUpdate)
          await flush()
          stopped = true
        }
      }
    },
    async list () {
      const keys = await adapter.keys()
      const out = []
      for (const k of keys) {
        if (!k.startsWith(LOG)) continue
        const key = k.slice(LOG.length)
        out.push({ name: decodeURIComponent(key), meta: await readMeta(key) })
      }
      return out
    },
    async remove (name) {
      const key = keyOf(name)
      await adapter.remove(LOG + key)
      await adapter.remove(META + key)
    }
  }
}

/** A store in memory (tests, or an app that wants no persistence): lost with the process. */
export function memoryStorage () {
  /** @type {Map<string, Uint8Array>} */
  const blobs = new Map()
  return blobStorage({
    async read (key) { return blobs.get(key) || null },
    async write (key, bytes) { blobs.set(key, bytes) },
    async remove (key) { blobs.delete(key) },
    async keys () { return [...blobs.keys()] }
  })
}
