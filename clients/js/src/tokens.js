// Sync tokens as the client sees them: opaque strings, except that a WebHost token
// (`wst1.<base64url JSON claims>.<signature>`) tells its expiry (`exp`, epoch seconds), which
// decides when the session asks the app for the next one.

/**
 * The expiry of a token in epoch milliseconds, or null when the token does not tell.
 * @param {string} token
 * @returns {number | null}
 */
export function tokenExpiry (token) {
  const parts = typeof token === 'string' ? token.split('.') : []
  if (parts.length !== 3 || parts[0] !== 'wst1') return null
  try {
    const text = atob(parts[1].replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (parts[1].length % 4)) % 4))
    const exp = JSON.parse(text).exp
    return Number.isFinite(exp) ? exp * 1000 : null
  } catch {
    return null
  }
}

/**
 * When to ask for the next token: a quarter of its lifetime before it expires, at least 2 s (the
 * app's back end and the in-band refresh need a moment), at most a minute, never earlier than
 * half-way.
 * @param {number} nowMs
 * @param {number} expiresAtMs
 */
export function renewalDelay (nowMs, expiresAtMs) {
  const lifetime = Math.max(0, expiresAtMs - nowMs)
  const margin = Math.min(lifetime / 2, Math.max(2000, Math.min(60000, lifetime * 0.25)))
  return Math.max(0, lifetime - margin)
}

/**
 * @typedef {string | { token: string, expiresAt?: number | Date | null }} TokenResult
 * What `getToken()` resolves to: a token, or a token and its expiry (epoch ms or a Date; needed
 * only for tokens that do not carry one).
 */

/**
 * @param {TokenResult} result
 * @returns {{ token: string, expiresAt: number | null }}
 */
export function normalizeToken (result) {
  if (typeof result === 'string') return { token: result, expiresAt: tokenExpiry(result) }
  if (result && typeof result.token === 'string') {
    const at = result.expiresAt instanceof Date ? result.expiresAt.getTime() : result.expiresAt
    return { token: result.token, expiresAt: Number.isFinite(at) ? Number(at) : tokenExpiry(result.token) }
  }
  throw new TypeError('getToken() must resolve to a token string or { token, expiresAt }')
}
