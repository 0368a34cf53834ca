// A minimal event emitter: `on` returns the function that unsubscribes.

/** @template {Record<string, any>} E */
export class Emitter {
  constructor () {
    /** @type {Map<keyof E, Set<(value: any) => void>>} */
    this._handlers = new Map()
  }

  /**
   * @template {keyof E} K
   * @param {K} event
   * @param {(value: E[K]) => void} handler
   * @returns {() => void}
   */
  on (event, handler) {
    let set = this._handlers.get(event)
    if (!set) this._handlers.set(event, (set = new Set()))
    set.add(handler)
    return () => { set.delete(handler) }
  }

  /**
   * @template {keyof E} K
   * @param {K} event
   * @param {E[K]} value
   */
  emit (event, value) {
    const set = this._handlers.get(event)
    if (!set) return
    for (const handler of [...set]) {
      try {
        handler(value)
      } catch (err) {
        // an app's handler must not break the sync loop; report it like an uncaught error, later
        setTimeout(() => { throw err }, 0)
      }
    }
  }
}
