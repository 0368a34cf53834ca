// For the test scripts: freeze this whole process (no event loop turn) until the test that runs
// it writes a line on stdin; the test looks at the database meanwhile.
import { readSync } from 'node:fs'

export function blockUntilGo () {
  const buf = Buffer.alloc(64)
  const pause = new Int32Array(new SharedArrayBuffer(4))
  for (;;) {
    try {
      if (readSync(0, buf) > 0) return
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err // a non-blocking stdin (some drivers set it): poll
    }
    Atomics.wait(pause, 0, 0, 5)
  }
}
