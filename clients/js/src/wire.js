// The frames a document's socket speaks: y-protocols' sync (0), awareness (1), auth (2) and query
// awareness (3), and WebHost's own type 87 (README "Sync"; server side sync_server/sync/control.py):
//   varUint 87, varUint version (1), varUint kind, payload
//   kind 0 REFRESH (client: varString token), 1 REFRESHED (varUint expires_at, epoch seconds),
//   2 REFRESH_REFUSED (varString reason), 3 DURABLE (varUint count: the first `count` update
//   messages this socket sent are committed; only on a socket opened with ?ack=1).
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'

export const SYNC = 0
export const AWARENESS = 1
export const AUTH = 2
export const QUERY_AWARENESS = 3
export const WEBHOST = 87
export const WEBHOST_VERSION = 1
export const REFRESH = 0
export const REFRESHED = 1
export const REFRESH_REFUSED = 2
export const DURABLE = 3

/** @param {import('yjs').Doc} doc */
export function step1Frame (doc) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, SYNC)
  syncProtocol.writeSyncStep1(e, doc)
  return encoding.toUint8Array(e)
}

/** @param {Uint8Array} update */
export function updateFrame (update) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, SYNC)
  syncProtocol.writeUpdate(e, update)
  return encoding.toUint8Array(e)
}

/**
 * @param {awarenessProtocol.Awareness} awareness
 * @param {number[]} clients
 */
export function awarenessFrame (awareness, clients) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, AWARENESS)
  encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(awareness, clients))
  return encoding.toUint8Array(e)
}

/** @param {string} token */
export function refreshFrame (token) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, WEBHOST)
  encoding.writeVarUint(e, WEBHOST_VERSION)
  encoding.writeVarUint(e, REFRESH)
  encoding.writeVarString(e, token)
  return encoding.toUint8Array(e)
}

/**
 * What a server frame asks of the document; `reply` is a frame to send back (sync step 2 answering
 * the server's step 1: an update message for the acknowledgement count).
 * @typedef {{ type: 'sync', step: number, reply: Uint8Array | null }
 *   | { type: 'awareness', update: Uint8Array }
 *   | { type: 'query-awareness' }
 *   | { type: 'denied', reason: string }
 *   | { type: 'refreshed', expiresAt: number }
 *   | { type: 'refresh-refused', reason: string }
 *   | { type: 'durable', count: number }
 *   | { type: 'ignored' }} Incoming
 */

/**
 * Read one server frame; sync messages are applied to `doc` with `origin`.
 * @param {Uint8Array} frame
 * @param {import('yjs').Doc} doc
 * @param {any} origin
 * @returns {Incoming}
 */
export function readFrame (frame, doc, origin) {
  const d = decoding.createDecoder(frame)
  const type = decoding.readVarUint(d)
  if (type === SYNC) {
    const e = encoding.createEncoder()
    encoding.writeVarUint(e, SYNC)
    const step = syncProtocol.readSyncMessage(d, e, doc, origin)
    return { type: 'sync', step, reply: step === syncProtocol.messageYjsSyncStep1 ? encoding.toUint8Array(e) : null }
  }
  if (type === AWARENESS) return { type: 'awareness', update: decoding.readVarUint8Array(d) }
  if (type === QUERY_AWARENESS) return { type: 'query-awareness' }
  if (type === AUTH) {
    // y-protocols/auth: varUint 0 = permission denied, then the reason
    return decoding.readVarUint(d) === 0 ? { type: 'denied', reason: decoding.readVarString(d) } : { type: 'ignored' }
  }
  if (type === WEBHOST) {
    if (decoding.readVarUint(d) !== WEBHOST_VERSION) return { type: 'ignored' }
    const kind = decoding.readVarUint(d)
    if (kind === REFRESHED) return { type: 'refreshed', expiresAt: decoding.readVarUint(d) }
    if (kind === REFRESH_REFUSED) return { type: 'refresh-refused', reason: decoding.readVarString(d) }
    if (kind === DURABLE) return { type: 'durable', count: decoding.readVarUint(d) }
  }
  return { type: 'ignored' }
}

export const STEP1 = syncProtocol.messageYjsSyncStep1
export const STEP2 = syncProtocol.messageYjsSyncStep2
