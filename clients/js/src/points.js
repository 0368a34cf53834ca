// The documented point format of track documents (README "Tracking"; server side
// sync_server/domain/tracking/points.py and filters.py): a Y.Array `points` of
//   { t, lat, lng, speed, heading, accuracy, alt }
// t: epoch milliseconds or ISO-8601 text (no offset = UTC), lat/lng degrees (WGS-84), speed m/s,
// heading degrees, accuracy and alt metres; only t, lat and lng are required. A fix is checked here
// before it is stored, with the server's reasons for what it would reject anyway: `malformed`,
// `out_of_range`, `null_island`. (Time-based checks - future, outside_day, too_old - and quota,
// duplicates and jumps are the server's: it reports them as feedback.)

export const FIELDS = ['t', 'lat', 'lng', 'speed', 'heading', 'accuracy', 'alt']
const OPTIONAL = ['speed', 'heading', 'accuracy', 'alt']
const DAY_MS = 86400000

export class InvalidFixError extends Error {
  /**
   * @param {'malformed' | 'out_of_range' | 'null_island'} reason
   * @param {string} message
   */
  constructor (reason, message) {
    super(message)
    this.name = 'InvalidFixError'
    this.reason = reason
    /** @type {number | undefined} which fix of a batch (Tracker.recordAll) */
    this.index = undefined
  }
}

/**
 * @typedef {{ t?: number | string | Date, lat: number, lng: number, speed?: number | null,
 *   heading?: number | null, accuracy?: number | null, alt?: number | null }} Fix
 * @typedef {{ t: number, lat: number, lng: number, speed?: number, heading?: number,
 *   accuracy?: number, alt?: number }} StoredFix
 */

/** @param {unknown} v */
const finite = (v) => typeof v === 'number' && Number.isFinite(v)

/**
 * Epoch ms of a fix time: a number (epoch ms), a Date or ISO-8601 text (no offset = UTC).
 * @param {unknown} t
 * @returns {number | null}
 */
export function timeOf (t) {
  if (finite(t)) return Math.trunc(/** @type {number} */ (t))
  if (t instanceof Date) return finite(t.getTime()) ? t.getTime() : null
  if (typeof t === 'string' && t.length <= 64 && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}/.test(t)) {
    const zoned = /(Z|[+-]\d{2}:?\d{2})$/.test(t) ? t : `${t}Z`
    const ms = Date.parse(zoned)
    return Number.isFinite(ms) ? ms : null
  }
  return null
}

/**
 * The fix as it is stored (documented fields only, t in epoch ms), or an InvalidFixError thrown.
 * @param {Fix} fix
 * @param {number} [now] epoch ms for a fix without t
 * @returns {StoredFix}
 */
export function validateFix (fix, now = Date.now()) {
  if (fix === null || typeof fix !== 'object') throw new InvalidFixError('malformed', 'a fix is an object { t, lat, lng, ... }')
  const t = fix.t === undefined || fix.t === null ? Math.trunc(now) : timeOf(fix.t)
  if (t === null) throw new InvalidFixError('malformed', 't: epoch milliseconds or ISO-8601 text')
  if (!finite(fix.lat) || !finite(fix.lng)) throw new InvalidFixError('malformed', 'lat and lng: finite numbers')
  if (fix.lat < -90 || fix.lat > 90 || fix.lng < -180 || fix.lng > 180) throw new InvalidFixError('out_of_range', 'lat in [-90, 90], lng in [-180, 180]')
  if (fix.lat === 0 && fix.lng === 0) throw new InvalidFixError('null_island', '(0, 0) is a receiver without a fix')
  /** @type {StoredFix} */
  const out = { t, lat: fix.lat, lng: fix.lng }
  for (const key of OPTIONAL) {
    const value = /** @type {any} */ (fix)[key]
    if (value === undefined || value === null) continue
    if (!finite(value)) throw new InvalidFixError('malformed', `${key}: a finite number when present`)
    Object.assign(out, { [key]: value })
  }
  return out
}

/**
 * The UTC day (YYYY-MM-DD) of epoch ms.
 * @param {number} ms
 */
export function utcDay (ms) {
  return new Date(Math.floor(ms / DAY_MS) * DAY_MS).toISOString().slice(0, 10)
}

/**
 * The track document of a vehicle's day.
 * @param {string} vehicleId
 * @param {string} day YYYY-MM-DD
 */
export function trackDoc (vehicleId, day) {
  return `tracks/${vehicleId}/${day}`
}
