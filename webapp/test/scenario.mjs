// The dispatcher app end to end in real headless Chromium or Firefox (browsers.mjs), against a real server
// (tests/test_webapp.py sets the server up and checks what this prints):
//   two dispatchers of one customer sign in; a tracker (yjs + y-websocket in Node) sends fixes and
//   the marker moves on both screens; one draws a geofence, the other sees it; the tracker crosses
//   it and both feeds show the enter event; a note written while one browser is offline reaches
//   the other after it reconnects; tasks and presence are shared; history replays the trail; a
//   viewer cannot edit; another customer's dispatcher sees none of it; a signed-out page cannot sync.
//
//   node test/scenario.mjs --config scenario.json    (prints one JSON line; screenshots into config.shots)
import { readFileSync } from 'node:fs'
import { launch } from './browsers.mjs'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]])
  return acc
}, []))
const cfg = JSON.parse(readFileSync(args.config, 'utf8'))
const WAIT = 20000
const result = { steps: [] }
const step = (name, data = {}) => { result.steps.push(name); Object.assign(result, data) }
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const browser = await launch() // TEST_BROWSER: chromium (default) or firefox
const killer = setTimeout(() => { console.error('scenario timed out; steps: ' + result.steps.join(', ')); process.exit(3) }, 170000)
const errors = []

async function dispatcher (name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const page = await context.newPage()
  page.on('pageerror', (e) => errors.push(`${name}: ${e}`))
  page.on('console', (m) => { if (m.type() === 'error' && !/WebSocket|ERR_INTERNET_DISCONNECTED|401|403|Failed to load resource/.test(m.text())) errors.push(`${name}: ${m.text()}`) })
  return { name, context, page }
}

async function signIn (d, slug, email, password) {
  await d.page.goto(`${cfg.base}/app/`)
  await d.page.waitForSelector('#signin-view:not([hidden])', { timeout: WAIT })
  await d.page.fill('#signin-customer', slug)
  await d.page.fill('#signin-email', email)
  await d.page.fill('#signin-password', password)
  await d.page.keyboard.press('Enter') // keyboard: the form submits from the password field
  await d.page.waitForSelector('#status[data-state="connected"]', { timeout: WAIT })
}

const shot = (d, what) => d.page.screenshot({ path: `${cfg.shots}/${what}-${d.name}.png` })
const markerLng = (d) => d.page.evaluate((vid) => { const m = window.webapp.markers.get(vid); return m ? m.getLatLng().lng : null }, cfg.vehicle)
const waitMarkerAt = (d, lng) => d.page.waitForFunction(([vid, x]) => {
  const m = window.webapp.markers.get(vid)
  return m && Math.abs(m.getLatLng().lng - x) < 1e-9 && m.options.status === 'live' && m.options.heading === 90
}, [cfg.vehicle, lng], { timeout: WAIT })

// --- the tracker: a phone appending fixes to its track document ----------------------------------
const track = new Y.Doc()
const points = track.getArray('points')
const tracker = new WebsocketProvider(`${cfg.ws}/sync/${cfg.slug}`, `tracks/${cfg.vehicle}/${cfg.day}`, track, {
  params: { token: cfg.trackerToken }, WebSocketPolyfill: WebSocket, disableBc: true
})
const T0 = Date.now() - 150000 // fixes 1 s apart, in the past (never in the future)
const fix = (i) => ({ t: T0 + i * 1000, lat: 52.5, lng: 13.4 + i * 0.0002, speed: 13.5, heading: 90, accuracy: 5 })
async function send (from, to) {
  for (let i = from; i <= to; i++) { points.push([fix(i)]); await sleep(40) }
}

try {
  const a = await dispatcher('alice')
  const b = await dispatcher('bob')
  await signIn(a, cfg.slug, cfg.users.alice.email, cfg.password)
  await signIn(b, cfg.slug, cfg.users.bob.email, cfg.password)
  step('signed_in')

  // 1. the marker moves on both screens
  await send(0, 4)
  await Promise.all([waitMarkerAt(a, fix(4).lng), waitMarkerAt(b, fix(4).lng)])
  const first = [await markerLng(a), await markerLng(b)]
  await send(5, 9)
  await Promise.all([waitMarkerAt(a, fix(9).lng), waitMarkerAt(b, fix(9).lng)])
  const moved = [await markerLng(a), await markerLng(b)]
  step('marker_moved', { marker: { first, moved }, vehicleRowStatus: await b.page.getAttribute(`#vehicle-list li[data-vehicle="${cfg.vehicle}"]`, 'data-status') })
  await shot(a, '1-marker')

  // presence: alice selects the vehicle; bob sees who looks at what
  await a.page.click(`#vehicle-list li[data-vehicle="${cfg.vehicle}"] button`)
  await b.page.waitForFunction(() => [...document.querySelectorAll('#dispatchers li')].some((li) => /looking at van-7/.test(li.textContent)), null, { timeout: WAIT })
  step('presence', { presenceOnBob: await b.page.$$eval('#dispatchers li', (lis) => lis.map((li) => li.textContent)) })

  // 2. alice draws a circle on the map; bob's screen shows it
  await a.page.click('#panel-geofences summary')
  await a.page.click('#draw-circle')
  const box = await a.page.locator('#map').boundingBox()
  const at = await a.page.evaluate(() => window.webapp.map.latLngToContainerPoint([52.5, 13.41]))
  await a.page.mouse.click(box.x + at.x, box.y + at.y)
  await a.page.fill('#geofence-name', 'Depot')
  await a.page.fill('#geofence-radius', '200')
  await a.page.click('#geofence-save')
  await a.page.waitForSelector('#geofence-list li', { timeout: WAIT })
  await b.page.click('#panel-geofences summary')
  await b.page.waitForFunction(() => [...document.querySelectorAll('#geofence-list li')].some((li) => li.textContent.includes('Depot')), null, { timeout: WAIT })
  const fence = await b.page.evaluate(() => [...window.webapp.geofences.values()].map((g) => ({ name: g.name, kind: g.kind, center: g.center, radius: g.radius_meters })))
  step('geofence_shared', { fenceSeenByBob: fence })
  await shot(b, '2-geofence')

  // 3. the tracker crosses it: both feeds show the enter event
  await send(10, 60)
  const enter = '#event-feed li[data-type="geofence_enter"]'
  await Promise.all([a.page.waitForSelector(enter, { timeout: WAIT }), b.page.waitForSelector(enter, { timeout: WAIT })])
  step('enter_event', { feed: { alice: await a.page.textContent(enter), bob: await b.page.textContent(enter) } })
  await shot(a, '3-event')
  await shot(b, '3-event')

  // 4. tasks: alice assigns one to the vehicle, bob sets it en route, alice sees that
  await a.page.fill('#task-title', 'Pick up pallets')
  await a.page.selectOption('#task-vehicle', cfg.vehicle)
  await a.page.fill('#task-driver', 'Dana')
  await a.page.click('#task-form button')
  await b.page.waitForSelector('#tasks li[data-status="open"]', { timeout: WAIT })
  await b.page.selectOption('#tasks li select', 'en route')
  await a.page.waitForSelector('#tasks li[data-status="en route"]', { timeout: WAIT })
  step('task_shared', { taskOnAlice: await a.page.textContent('#tasks li') })

  // 5. bob goes offline, writes a note; alice gets it once bob is back
  const NOTE = 'Call driver 7 at the depot'
  // bob's task edit first durable (alice sees a relay before the server's commit acknowledges it)
  await b.page.waitForFunction(() => window.webapp.sync.status === 'durable', null, { timeout: WAIT })
  await b.context.setOffline(true)
  await b.page.evaluate(() => { window.webapp.sync.disconnect(); window.dispatchEvent(new Event('offline')) })
  await b.page.waitForSelector('#status[data-state="offline"]', { timeout: WAIT })
  await b.page.fill('#note-text', NOTE)
  await b.page.click('#note-form button')
  await b.page.waitForSelector('#pending:not([hidden])', { timeout: WAIT })
  const pendingText = await b.page.textContent('#pending')
  await shot(b, '5-offline')
  await sleep(1500)
  const aliceBefore = await a.page.$$eval('#notes li', (lis) => lis.map((li) => li.textContent))
  await b.context.setOffline(false)
  await b.page.evaluate(() => { window.webapp.sync.connect(); window.dispatchEvent(new Event('online')) })
  await a.page.waitForFunction((t) => [...document.querySelectorAll('#notes li')].some((li) => li.textContent.includes(t)), NOTE, { timeout: WAIT })
  await b.page.waitForSelector('#status[data-state="connected"]', { timeout: WAIT })
  const onlineNames = (d) => d.page.$$eval('#dispatchers li', (lis) => lis.map((li) => li.textContent).join(' | '))
  await a.page.waitForFunction(() => /bob/.test(document.getElementById('dispatchers').textContent), null, { timeout: WAIT })
  await b.page.waitForFunction(() => /alice/.test(document.getElementById('dispatchers').textContent), null, { timeout: WAIT })
  step('offline_note', { pendingText, aliceBefore, bobPendingAfter: await b.page.isVisible('#pending'), presenceAfterReconnect: [await onlineNames(a), await onlineNames(b)] })
  await shot(a, '5-note-arrived')

  // 5b. an edit left unsynced in the store of the app before the client library
  //     (y-indexeddb database `webhost-sync:<customer id>:dispatch`) reaches alice after bob reloads
  const EARLIER = 'Left in the earlier store'
  const earlier = new Y.Doc()
  earlier.getArray('notes').push([{ id: 'earlier-1', text: EARLIER, by: 'bob', at: Date.now() }])
  const customerId = await b.page.evaluate(() => window.webapp.session.customer.id)
  await b.page.evaluate(async ([name, bytes]) => {
    await new Promise((resolve, reject) => {
      const req = indexedDB.open(name, 1) // y-indexeddb's layout: stores "updates" (auto keys) and "custom"
      req.onupgradeneeded = () => { req.result.createObjectStore('updates', { autoIncrement: true }); req.result.createObjectStore('custom') }
      req.onerror = () => reject(req.error)
      req.onsuccess = () => {
        const tx = req.result.transaction('updates', 'readwrite')
        tx.objectStore('updates').add(new Uint8Array(bytes))
        tx.oncomplete = () => { req.result.close(); resolve() }
        tx.onerror = () => reject(tx.error)
      }
    })
  }, [`webhost-sync:${customerId}:dispatch`, Array.from(Y.encodeStateAsUpdate(earlier))])
  await b.page.reload()
  await b.page.waitForSelector('#status[data-state="connected"]', { timeout: WAIT })
  step('earlier_store_reloaded')
  await a.page.waitForFunction((t) => [...document.querySelectorAll('#notes li')].some((li) => li.textContent.includes(t)), EARLIER, { timeout: WAIT })
  step('earlier_store_note_arrived')
  await b.page.waitForFunction((n) => indexedDB.databases().then((dbs) => !dbs.some((d) => d.name === n)), `webhost-sync:${customerId}:dispatch`, { timeout: WAIT })
  step('earlier_store', { earlierNoteOnAlice: EARLIER })

  // 6. history: bob replays the vehicle's trail with the span's geofence events
  await b.page.click('#panel-history summary')
  await b.page.selectOption('#history-vehicle', cfg.vehicle)
  await b.page.click('#history-form button[type="submit"]')
  await b.page.waitForFunction(() => /fixes/.test(document.getElementById('history-info').textContent), null, { timeout: WAIT })
  await b.page.locator('#history-slider').focus()
  for (let i = 0; i < 5; i++) await b.page.keyboard.press('ArrowRight') // keyboard drives the slider
  step('history', {
    history: {
      info: await b.page.textContent('#history-info'),
      max: Number(await b.page.getAttribute('#history-slider', 'max')),
      value: Number(await b.page.inputValue('#history-slider')),
      time: await b.page.textContent('#history-time'),
      markerLng: await b.page.evaluate(() => window.webapp.history.marker.getLatLng().lng),
      events: await b.page.$$eval('#history-events li', (lis) => lis.map((li) => li.textContent))
    }
  })
  await shot(b, '6-history')

  // 6b. bob edits the circle's radius, alice draws a polygon: each sees the other's change
  await b.page.evaluate(() => { document.getElementById('panel-geofences').open = true })
  await b.page.click('#geofence-list li button:nth-of-type(2)') // Edit (of Show, Edit, Delete)
  await b.page.fill('#geofence-radius', '250')
  await b.page.click('#geofence-save')
  await a.page.waitForFunction(() => [...window.webapp.geofences.values()].some((g) => g.radius_meters === 250), null, { timeout: WAIT })
  await a.page.click('#draw-polygon')
  const abox = await a.page.locator('#map').boundingBox()
  for (const [lat, lng] of [[52.503, 13.402], [52.503, 13.406], [52.506, 13.404]]) {
    const p = await a.page.evaluate(([la, ln]) => window.webapp.map.latLngToContainerPoint([la, ln]), [lat, lng])
    await a.page.mouse.click(abox.x + p.x, abox.y + p.y)
  }
  await a.page.fill('#geofence-name', 'Yard')
  await a.page.click('#draw-finish')
  await b.page.waitForFunction(() => [...window.webapp.geofences.values()].some((g) => g.name === 'Yard'), null, { timeout: WAIT })
  const shapes = await b.page.evaluate(() => [...window.webapp.geofences.values()].map((g) => ({ name: g.name, kind: g.kind, radius: g.radius_meters, corners: g.polygon ? g.polygon.coordinates[0].length : null })).sort((x, y) => x.name.localeCompare(y.name)))
  step('geofences_edited', { shapesOnBob: shapes })
  await shot(b, '6b-geofences')

  // 7. a viewer sees everything and can change nothing
  const v = await dispatcher('viewer')
  await signIn(v, cfg.slug, cfg.users.vic.email, cfg.password)
  await v.page.waitForSelector(enter, { timeout: WAIT })
  const viewerUi = await v.page.evaluate(() => ({
    noteFormVisible: !!document.getElementById('note-form').offsetParent,
    drawVisible: !!document.getElementById('draw-circle').offsetParent,
    editButtonsDisabled: [...document.querySelectorAll('#geofence-list button')].filter((b) => b.textContent !== 'Show').every((b) => b.disabled)
  }))
  const viewerRest = await v.page.evaluate(async () => {
    const r = await fetch('/api/v1/geofences', { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': window.webapp.session.csrf_token }, body: JSON.stringify({ kind: 'circle', name: 'sneaky', center: { lat: 1, lng: 1 }, radius_meters: 5 }) })
    const t = await fetch('/api/v1/sync-tokens', { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': window.webapp.session.csrf_token }, body: JSON.stringify({ docs: ['dispatch'], mode: 'rw' }) })
    return { geofence: r.status, rwToken: t.status }
  })
  await v.page.evaluate(() => window.webapp.dispatch.getArray('notes').push([{ id: 'viewer-note', text: 'written by a viewer', by: 'vic', at: Date.now() }]))
  await sleep(1500)
  const viewerNoteReachedAlice = await a.page.evaluate(() => document.getElementById('notes').textContent.includes('written by a viewer'))
  step('viewer', { viewerUi, viewerRest, viewerNoteReachedAlice })
  await shot(v, '7-viewer')

  // 8. a dispatcher of another customer sees none of it
  const e = await dispatcher('other')
  await signIn(e, cfg.other.slug, cfg.other.email, cfg.password)
  await sleep(1000)
  const otherSees = await e.page.evaluate(() => ({
    markers: window.webapp.markers.size,
    vehicles: document.querySelectorAll('#vehicle-list li[data-vehicle]').length,
    events: document.querySelectorAll('#event-feed li[data-type]').length,
    geofences: window.webapp.geofences.size,
    notes: document.querySelectorAll('#notes li').length,
    tasks: document.querySelectorAll('#tasks li').length
  }))
  const otherToken = await e.page.evaluate(async (slug) => {
    const t = await fetch('/api/v1/sync-tokens', { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': window.webapp.session.csrf_token }, body: JSON.stringify({ docs: ['fleet'], mode: 'r' }) })
    const token = (await t.json()).token
    return await new Promise((resolve) => { // its token opened on the first customer's fleet: refused
      const ws = new WebSocket(`${location.origin.replace('http', 'ws')}/sync/${slug}/fleet`, [token])
      ws.onclose = (ev) => resolve(ev.code)
    })
  }, cfg.slug)
  step('other_customer', { otherSees, otherTokenOnFirstCustomer: otherToken })
  await shot(e, '8-other-customer')

  // 9. sign-out: the page stops syncing and its last token opens nothing
  const token = await a.page.evaluate(async () => { // a token of this app session, as the page's sync uses
    const t = await fetch('/api/v1/sync-tokens', { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': window.webapp.session.csrf_token }, body: JSON.stringify({ docs: ['fleet'], mode: 'r' }) })
    return (await t.json()).token
  })
  await a.page.evaluate(([slug, t]) => { // a copy of the token, its websocket held open: the server ends it at sign-out
    window.held = new Promise((resolve) => {
      const ws = new WebSocket(`${location.origin.replace('http', 'ws')}/sync/${slug}/fleet`, [t])
      ws.onopen = () => { window.heldOpen = true }
      ws.onclose = (ev) => resolve(ev.code)
    })
  }, [cfg.slug, token])
  await a.page.waitForFunction(() => window.heldOpen === true, null, { timeout: WAIT })
  await a.page.click('#sign-out')
  await a.page.waitForSelector('#status[data-state="signed-out"]', { timeout: WAIT })
  const afterSignOut = await a.page.evaluate(async ([slug, t]) => {
    const r = await fetch('/api/v1/sync-tokens', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ docs: ['fleet'] }) })
    const code = await new Promise((resolve) => {
      const ws = new WebSocket(`${location.origin.replace('http', 'ws')}/sync/${slug}/fleet`, [t])
      ws.onclose = (ev) => resolve(ev.code)
    })
    return { tokenStatus: r.status, oldTokenClose: code, heldClose: await window.held, syncing: window.webapp.sync !== null, signInShown: !document.getElementById('signin-view').hidden }
  }, [cfg.slug, token])
  step('signed_out', { afterSignOut, signOutNote: await a.page.textContent('#signin-note') })
  await shot(a, '9-signed-out')
  result.errors = errors
  console.log(JSON.stringify(result))
} catch (err) {
  console.error(`failed after steps: ${result.steps.join(', ')}`)
  throw err
} finally {
  clearTimeout(killer)
  tracker.destroy()
  await browser.close()
}
process.exit(0)
