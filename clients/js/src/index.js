// @webhost/sync-client: the client library of WebHost Sync for offline-first apps.
//   connect({ url, customer, getToken, storage }) -> Session (session.js)
//   session.open(name) -> SyncedDoc (document.js): { doc: Y.Doc, awareness, status, pending, on() }
//   session.tracker(vehicleId).record(fix) (tracker.js) -> the fix's UTC day's track document
// Stores: memoryStorage / blobStorage (here), fileStorage ('@webhost/sync-client/node'),
// indexeddbStorage ('@webhost/sync-client/indexeddb').
export { connect, Session } from './session.js'
export { SyncedDoc, SERVER_CLIENT_ID } from './document.js'
export { Tracker, readFeedback } from './tracker.js'
export { validateFix, InvalidFixError, utcDay, trackDoc, timeOf, FIELDS } from './points.js'
export { blobStorage, memoryStorage, STORE } from './storage.js'
export { backoffDelay } from './backoff.js'
export { tokenExpiry } from './tokens.js'
export * as Y from 'yjs'

/**
 * The types an app binds its UI to (TypeScript: `import type { SyncStatus } from '@webhost/sync-client'`).
 * @typedef {import('./document.js').SyncStatus} SyncStatus
 * @typedef {import('./document.js').DocStatus} DocStatus
 * @typedef {import('./document.js').Refusal} Refusal
 * @typedef {import('./session.js').ConnectOptions} ConnectOptions
 * @typedef {import('./tracker.js').Feedback} Feedback
 * @typedef {import('./tracker.js').DayFeedback} DayFeedback
 * @typedef {import('./points.js').Fix} Fix
 * @typedef {import('./storage.js').Storage} Storage
 * @typedef {import('./tokens.js').TokenResult} TokenResult
 */
