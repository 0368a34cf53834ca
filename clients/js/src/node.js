// Node's store: one directory, a log file and a meta file per document (storage.js blobStorage).
// Writes of the meta record and compactions go to a temporary file renamed over the old one.
//   import { fileStorage } from '@webhost/sync-client/node'
//   connect({ ..., storage: fileStorage('/var/lib/my-app/sync') })
import { mkdir, readFile, writeFile, appendFile, rename, rm, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { blobStorage } from './storage.js'

/**
 * @param {string} dir created when missing
 * @param {{ flushMs?: number, compactAfter?: number }} [options]
 * @returns {import('./storage.js').Storage}
 */
export function fileStorage (dir, options) {
  const ready = mkdir(dir, { recursive: true })
  const path = (/** @type {string} */ key) => join(dir, key)
  return blobStorage({
    async read (key) {
      await ready
      try {
        const buf = await readFile(path(key))
        return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength)
      } catch (err) {
        if (/** @type {any} */ (err).code === 'ENOENT') return null
        throw err
      }
    },
    async write (key, bytes) {
      await ready
      const tmp = path(`${key}.tmp`)
      await writeFile(tmp, bytes)
      await rename(tmp, path(key))
    },
    async append (key, bytes) {
      await ready
      await appendFile(path(key), bytes)
    },
    async remove (key) {
      await ready
      await rm(path(key), { force: true })
    },
    async keys () {
      await ready
      return (await readdir(dir)).filter((name) => !name.endsWith('.tmp'))
    }
  }, options)
}
