// Reconnection delays: exponential with full jitter (a random delay in [0, min(max, base * 2^n))),
// so a fleet of phones coming back after an outage spreads its reconnections instead of arriving
// in waves.

/**
 * @param {number} attempt failed attempts so far (0 for the first retry)
 * @param {{ baseMs?: number, maxMs?: number, random?: () => number }} [options]
 */
export function backoffDelay (attempt, { baseMs = 500, maxMs = 30000, random = Math.random } = {}) {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30))
  return Math.floor(random() * cap)
}
