// session.tracker(vehicleId): records GPS fixes into the vehicle's track documents, one per UTC day
// of the fix (`tracks/{vehicle}/{YYYY-MM-DD}`, Y.Array `points`), and reads the server's
// materialization feedback from each of them: the awareness state of client id 2^53 - 1
//   {webhost: 'materialization', v: 1, doc, materialized, stored, rejected: {reason: n},
//    quota: {day, limit, used, reached}, updated_at}
// (sync_server/domain/tracking/feedback.py). The last feedback of a day is kept when the socket
// drops (the server sends it again on the next join).
import { Emitter } from './emitter.js'
import { SERVER_CLIENT_ID } from './document.js'
import { validateFix, utcDay, trackDoc, InvalidFixError } from './points.js'

/**
 * @typedef {{ day: string | null, limit: number, used: number, reached: boolean }} Quota
 * @typedef {{ doc: string, day: string, materialized: number, stored: number,
 *   rejected: Record<string, number>, quota: Quota | null, updatedAt: number }} DayFeedback
 * @typedef {{ materialized: number, stored: number, rejected: Record<string, number>,
 *   days: Record<string, DayFeedback> }} Feedback
 * @typedef {{ feedback: DayFeedback, day: { day: string, doc: string } }} TrackerEvents
 */

/**
 * The feedback in a server awareness state, or null when it is not one (version 1).
 * @param {any} state
 * @param {string} day
 * @returns {DayFeedback | null}
 */
export function readFeedback (state, day) {
  if (!state || state.webhost !== 'materialization' || state.v !== 1) return null
  /** @type {Record<string, number>} */
  const rejected = {}
  if (state.rejected && typeof state.rejected === 'object') {
    for (const [reason, n] of Object.entries(state.rejected)) if (typeof n === 'number' && Number.isFinite(n)) rejected[reason] = n
  }
  const q = state.quota
  return {
    doc: String(state.doc),
    day,
    materialized: Number(state.materialized) || 0,
    stored: Number(state.stored) || 0,
    rejected,
    quota: q && typeof q === 'object' ? { day: q.day ?? null, limit: Number(q.limit) || 0, used: Number(q.used) || 0, reached: !!q.reached } : null,
    updatedAt: Number(state.updated_at) || 0
  }
}

export class Tracker {
  /**
   * @param {import('./session.js').Session} session
   * @param {string} vehicleId
   * @param {{ clock: () => number }} options
   */
  constructor (session, vehicleId, { clock }) {
    if (typeof vehicleId !== 'string' || !vehicleId || vehicleId.includes('/')) throw new TypeError('vehicleId: the vehicle id or identifier (no "/")')
    this.session = session
    this.vehicleId = vehicleId
    this.clock = clock
    /** @type {Map<string, import('./document.js').SyncedDoc>} day -> its track document */
    this._days = new Map()
    /** @type {Map<string, DayFeedback>} */
    this._feedback = new Map()
    /** @type {Emitter<TrackerEvents>} */
    this._events = new Emitter()
    const prefix = trackDoc(vehicleId, '')
    for (const [name, doc] of session.docs) if (name.startsWith(prefix)) this._watch(name.slice(prefix.length), doc)
    // days the session opens itself (resumed with pending changes from an earlier run)
    session.on('open', (doc) => { if (doc.name.startsWith(prefix)) this._watch(doc.name.slice(prefix.length), doc) })
  }

  /**
   * @template {keyof TrackerEvents} K
   * @param {K} event
   * @param {(value: TrackerEvents[K]) => void} handler
   */
  on (event, handler) { return this._events.on(event, handler) }

  /**
   * Validate a fix and append it to its UTC day's track document (kept on the device at once,
   * synced when online). Throws InvalidFixError (reason malformed / out_of_range / null_island).
   * @param {import('./points.js').Fix} fix
   * @returns {{ doc: string, day: string, t: number }}
   */
  record (fix) {
    const stored = validateFix(fix, this.clock())
    const day = utcDay(stored.t)
    const doc = this.day(day)
    doc.doc.getArray('points').push([stored])
    return { doc: doc.name, day, t: stored.t }
  }

  /**
   * Record many fixes at once (a batch from a GPS buffer, or a day built offline): all are
   * validated before any is stored (InvalidFixError names the first bad one by `index`), then each
   * day's fixes are appended in one transaction, in the given order.
   * @param {import('./points.js').Fix[]} fixes
   * @returns {Record<string, number>} fixes appended per UTC day
   */
  recordAll (fixes) {
    const now = this.clock()
    /** @type {Map<string, import('./points.js').StoredFix[]>} */
    const byDay = new Map()
    fixes.forEach((fix, index) => {
      let stored
      try {
        stored = validateFix(fix, now)
      } catch (err) {
        if (err instanceof InvalidFixError) err.index = index
        throw err
      }
      const day = utcDay(stored.t)
      const list = byDay.get(day)
      if (list) list.push(stored)
      else byDay.set(day, [stored])
    })
    /** @type {Record<string, number>} */
    const counts = {}
    for (const [day, list] of byDay) {
      this.day(day).doc.getArray('points').push(list)
      counts[day] = list.length
    }
    return counts
  }

  /**
   * The track document of one UTC day (opened when needed).
   * @param {string} day YYYY-MM-DD
   */
  day (day) {
    let doc = this._days.get(day)
    if (!doc || doc._closed) {
      doc = this.session.open(trackDoc(this.vehicleId, day))
      this._watch(day, doc)
      this._events.emit('day', { day, doc: doc.name })
    }
    return doc
  }

  /** The track documents open so far, by day. */
  get days () { return [...this._days.keys()].sort() }

  /**
   * @param {string} day
   * @param {import('./document.js').SyncedDoc} doc
   */
  _watch (day, doc) {
    if (this._days.get(day) === doc) return
    this._days.set(day, doc)
    const read = () => {
      const fb = readFeedback(doc.awareness.getStates().get(SERVER_CLIENT_ID), day)
      if (!fb) return
      const old = this._feedback.get(day)
      if (old && old.updatedAt === fb.updatedAt && old.materialized === fb.materialized) return
      this._feedback.set(day, fb)
      this._events.emit('feedback', fb)
    }
    doc.awareness.on('change', read)
    read()
  }

  /**
   * What the server made of the recorded fixes: totals over the days, and each day's feedback.
   * @returns {Feedback}
   */
  feedback () {
    /** @type {Feedback} */
    const out = { materialized: 0, stored: 0, rejected: {}, days: {} }
    for (const [day, fb] of this._feedback) {
      out.materialized += fb.materialized
      out.stored += fb.stored
      for (const [reason, n] of Object.entries(fb.rejected)) out.rejected[reason] = (out.rejected[reason] || 0) + n
      out.days[day] = fb
    }
    return out
  }

  /** Local fixes of this vehicle not yet durable on the server. */
  get pending () {
    let n = 0
    for (const d of this._days.values()) n += d.pending
    return n
  }
}
