// The browser's store: y-indexeddb (one IndexedDB database per document, named
// `${prefix}${document}`), the meta record in its key-value store.
//   import { indexeddbStorage } from '@webhost/sync-client/indexeddb'
//   connect({ ..., storage: indexeddbStorage() })
import { IndexeddbPersistence } from 'y-indexeddb'
import { STORE } from './storage.js'

const META = 'webhost-sync-meta'

/**
 * @param {{ prefix?: string, indexedDB?: IDBFactory }} [options] prefix: of the database names
 *   (default `webhost-sync:`; connect() scopes document names by customer already)
 * @returns {import('./storage.js').Storage}
 */
export function indexeddbStorage ({ prefix = 'webhost-sync:', indexedDB = globalThis.indexedDB } = {}) {
  return {
    async bind (name, doc) {
      const persistence = new IndexeddbPersistence(prefix + name, doc)
      Object.defineProperty(persistence, STORE, { value: true }) // the origin of what it loads into the doc
      await persistence.whenSynced
      let meta = null
      try { meta = JSON.parse(await persistence.get(META)) } catch { meta = null }
      /** @type {Promise<any>} */
      let last = Promise.resolve()
      return {
        meta,
        setMeta (m) { last = persistence.set(META, JSON.stringify(m)) },
        async flush () { await last },
        async destroy () { await last; await persistence.destroy() }
      }
    },
    async list () {
      if (!indexedDB || typeof indexedDB.databases !== 'function') return []
      const out = []
      for (const info of await indexedDB.databases()) {
        if (!info.name || !info.name.startsWith(prefix)) continue
        out.push({ name: info.name.slice(prefix.length), meta: await readMeta(indexedDB, info.name) })
      }
      return out
    },
    remove (name) {
      return new Promise((resolve, reject) => {
        const req = indexedDB.deleteDatabase(prefix + name)
        req.onsuccess = () => resolve(undefined)
        req.onerror = () => reject(req.error)
      })
    }
  }
}

/**
 * The meta record of one y-indexeddb database, read without binding a document.
 * @param {IDBFactory} factory
 * @param {string} dbName
 * @returns {Promise<import('./storage.js').DocMeta | null>}
 */
function readMeta (factory, dbName) {
  return new Promise((resolve) => {
    const req = factory.open(dbName)
    // gone since databases() listed it (deleted meanwhile): opening must not create it again empty
    req.onupgradeneeded = () => { if (req.transaction) req.transaction.abort() }
    req.onerror = () => resolve(null)
    req.onsuccess = () => {
      const db = req.result
      try {
        const get = db.transaction('custom', 'readonly').objectStore('custom').get(META)
        get.onsuccess = () => { db.close(); try { resolve(JSON.parse(get.result)) } catch { resolve(null) } }
        get.onerror = () => { db.close(); resolve(null) }
      } catch {
        db.close()
        resolve(null)
      }
    }
  })
}
