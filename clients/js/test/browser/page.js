// The browser side of tests/test_sync_client_browser.py (driven by run.mjs): one document `notes`
// kept in IndexedDB through @webhost/sync-client; everything it saw is on window.harness.
import { connect } from '@webhost/sync-client'
import { indexeddbStorage } from '@webhost/sync-client/indexeddb'

const params = new URLSearchParams(location.search)
const log = []
const started = performance.now()
const at = () => Math.round(performance.now() - started)

// the DURABLE frames the server sends, seen at the socket (before the library reads them)
class WatchedWebSocket extends WebSocket {
  constructor (...args) {
    super(...args)
    this.addEventListener('message', (event) => {
      const b = new Uint8Array(event.data)
      if (b[0] === 87 && b[1] === 1 && b[2] === 3) log.push({ at: at(), durableFrame: true })
    })
    this.addEventListener('close', (event) => log.push({ at: at(), close: event.code }))
  }
}

const session = connect({
  url: params.get('server'),
  customer: params.get('customer'),
  getToken: () => window.getToken(),
  storage: indexeddbStorage(),
  WebSocket: WatchedWebSocket,
  backoff: { baseMs: 100, maxMs: 1000 },
  online: params.get('offline') !== '1' // a browser without network emulation (Firefox here): the app goes offline
})
const notes = session.open('notes')
notes.on('status', ({ status, pending }) => {
  log.push({ at: at(), status, pending })
  document.getElementById('status').textContent = `${status} (${pending})`
  if (status === 'durable') {
    // a synchronous request: this page stays frozen at its durable event while the driver (and the
    // test behind it) looks at the server's database
    const xhr = new XMLHttpRequest()
    xhr.open('POST', '/checkpoint', false)
    xhr.send(JSON.stringify(notes.doc.getMap('notes').toJSON()))
  }
})

window.harness = {
  session,
  loaded: notes.whenLoaded.then(() => true),
  write (key, value) { notes.doc.getMap('notes').set(key, value) },
  state () {
    return { status: notes.status, pending: notes.pending, notes: notes.doc.getMap('notes').toJSON(), log }
  },
  reconnect () { session.disconnect(); session.connect() },
  offline () { session.disconnect() },
  online () { session.connect() }
}
