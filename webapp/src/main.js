// The dispatcher web app (served at /app/ by webhost-sync).
//
// Documents (synced by @webhost/sync-client, clients/js: tokens from the app's own session, POST
// /api/v1/sync-tokens, renewed by the library before they expire; both documents kept in IndexedDB):
//   fleet     live    Y.Map vehicle id -> {t, lat, lng, speed, heading, accuracy, alt, name} (the server's pipeline)
//             events  Y.Array of feed entries, newest last (tracking/event_feed.py)
//             changes Y.Map what -> ms: "geofences" changed, fetch them again (REST is their home)
//             awareness: {user: {name, email, color}, viewing: vehicle id | null}
//   dispatch  notes   Y.Array of {id, text, by, at}
//             tasks   Y.Map id -> Y.Map {title, vehicle_id, driver, status: open|en route|done, by, at}
//             edits made offline survive a reload and merge on reconnect; "N edits kept on this
//             device" counts the local changes the server has not acknowledged as durable yet
import * as Y from 'yjs'
import { connect } from '@webhost/sync-client'
import { indexeddbStorage } from '@webhost/sync-client/indexeddb'
import { IndexeddbPersistence } from 'y-indexeddb'
import L from 'leaflet'
import 'leaflet/dist/leaflet.css'
import './style.css'

const $ = (id) => document.getElementById(id)
const config = (() => {
  try { return JSON.parse($('app-config').textContent) } catch { return {} }
})()
const STALE_MS = (config.staleMinutes || 5) * 60000
const OFFLINE_MS = (config.offlineMinutes || 60) * 60000
const TOKEN_SECONDS = config.syncTokenSeconds || 600
const COLORS = ['#2563eb', '#16a34a', '#db2777', '#ea580c', '#7c3aed', '#0891b2']
const TRAIL_POINTS = 30
const FEED_SHOWN = 100

const app = { session: null, sync: null, markers: new Map(), trails: new Map(), geofences: new Map(), selected: null }
window.webapp = app // for the browser tests and for debugging

// --- REST with the session cookie ----------------------------------------------------------------

class ApiError extends Error {
  constructor (status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`)
    this.status = status
    this.body = body
  }
}

async function api (method, path, body) {
  const headers = { Accept: 'application/json' }
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  if (method !== 'GET' && app.session) headers['X-CSRF-Token'] = app.session.csrf_token
  const res = await fetch(path, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) })
  if (res.status === 204) return null
  const text = await res.text()
  let data = null
  try { data = text ? JSON.parse(text) : null } catch { data = text }
  if (!res.ok) {
    if (res.status === 401 && app.session && path !== '/api/v1/app/session') signedOut('Your session ended: sign in again.')
    throw new ApiError(res.status, data)
  }
  return data
}

// --- states: starting, connecting, connected, offline (pending edits), refused, signed out ------------

function setStatus (state, text) {
  const el = $('status')
  el.dataset.state = state
  el.textContent = text || state
}

// The session's status (offline / pending / durable / read_only / refused) and its count of local changes the
// server has not acknowledged as durable yet.
function refreshStatus () {
  const sync = app.sync
  if (!app.session || !sync) return
  if (sync.status === 'refused') {
    const refusal = [...sync.docs.values()].map((d) => d.refusal).find(Boolean)
    setStatus('refused', `refused: ${(refusal && (refusal.reason || refusal.code)) || ''}`)
  } else if (sync.status === 'durable' || sync.status === 'pending') {
    setStatus('connected', 'live')
  } else if (sync.status === 'read_only') { // edits were made that this sign-in may not save
    setStatus('connected', 'live (read only: your edits are not saved)')
  } else if (sync.online && navigator.onLine !== false) {
    setStatus('connecting', 'connecting…')
  } else {
    setStatus('offline', 'offline')
  }
  const el = $('pending')
  el.hidden = !(sync.status === 'offline' && sync.pending > 0)
  el.textContent = `${sync.pending} edit${sync.pending === 1 ? '' : 's'} kept on this device, sent on reconnect`
}

// --- sign-in ------------------------------------------------------------------------------------------

function showSignIn (note) {
  $('app-view').hidden = true
  $('sign-out').hidden = true
  $('signin-view').hidden = false
  $('signin-note').textContent = note || ''
  $('who').textContent = ''
  $('customer').textContent = ''
  setStatus('signed-out', 'signed out')
  $('signin-customer').focus()
}

$('signin-form').addEventListener('submit', async (e) => {
  e.preventDefault()
  $('signin-error').textContent = ''
  try {
    const session = await api('POST', '/api/v1/app/session', {
      customer: $('signin-customer').value.trim(),
      email: $('signin-email').value.trim(),
      password: $('signin-password').value
    })
    $('signin-password').value = ''
    await start(session)
  } catch (err) {
    $('signin-error').textContent = err.status === 401 ? 'Customer, email or password is wrong.' : err.status === 429 ? 'Too many attempts: wait a minute.' : `Sign-in failed: ${err.message}`
  }
})

$('sign-out').addEventListener('click', async () => {
  stopSync() // first: the server closes our sockets (4401) as it ends the session; nothing may react ("session ended")
  try { await api('DELETE', '/api/v1/app/session') } catch { /* the session is gone either way */ }
  signedOut('Signed out.')
})

function signedOut (note) {
  stopSync()
  app.session = null
  showSignIn(note)
}

// --- sync -----------------------------------------------------------------------------------------

// The library asks for a token at start, before each one expires (handed to the open sockets in
// band) and after a 4401; a signed-out session (401) or a refusal (403) ends the app's session.
async function syncToken () {
  const mode = app.session.can_write ? 'rw' : 'r'
  try {
    const minted = await api('POST', '/api/v1/sync-tokens', { docs: ['fleet', 'dispatch'], mode, ttl_seconds: TOKEN_SECONDS })
    return minted.token
  } catch (err) {
    if (err.status === 401 || err.status === 403) signedOut(err.status === 401 ? 'Your session ended: sign in again.' : `Refused: ${err.message}`)
    throw err
  }
}

function stopSync () {
  if (app.sync) app.sync.close() // what is not on the device yet is written first
  app.sync = null
  app.presence = null
  app.fleet = null // nothing of this session stays on screen for the next one
  for (const layer of [vehicleLayer, fenceLayer, eventLayer, historyLayer, drawLayer]) if (layer) layer.clearLayers()
  app.markers.clear()
  app.trails.clear()
  app.geofences = new Map()
  app.framed = false
  app.selected = null
  rows.clear()
  for (const id of ['vehicle-list', 'event-feed', 'geofence-list', 'dispatchers', 'notes', 'tasks', 'history-events']) $(id).replaceChildren()
}

async function start (session) {
  app.session = session
  $('signin-view').hidden = true
  $('app-view').hidden = false
  $('sign-out').hidden = false
  $('customer').textContent = session.customer.name || session.customer.slug
  $('who').textContent = `${session.user.name || session.user.email} · ${session.user.role}`
  document.body.classList.toggle('read-only', !session.can_write)
  for (const el of document.querySelectorAll('.editing button, .editing input, .editing textarea, .editing select')) el.disabled = !session.can_write
  setStatus('connecting', 'connecting…')
  ensureMap()
  app.sync = connect({
    url: location.origin,
    customer: session.customer.slug,
    getToken: syncToken,
    storage: indexeddbStorage({ prefix: `webhost-sync:${session.customer.id}:` }) // one customer's data apart from another's
  })
  app.sync.on('status', refreshStatus)
  const fleet = app.sync.open('fleet')
  const dispatch = app.sync.open('dispatch')
  app.fleet = fleet.doc
  app.dispatch = dispatch.doc
  adoptEarlierStore(dispatch, `webhost-sync:${session.customer.id}:dispatch`).catch((err) => console.warn('earlier local store not read', err))
  app.presence = fleet.awareness
  refreshStatus()
  const me = app.presence
  me.setLocalStateField('user', { name: session.user.name || session.user.email, email: session.user.email, color: COLORS[app.fleet.clientID % COLORS.length] })
  me.setLocalStateField('viewing', null)
  me.on('change', () => scheduleRender('presence'))
  bindFleet()
  bindDispatch()
  await loadGeofences()
  scheduleRender('all')
}

// Before the client library the app kept the dispatch document in its own y-indexeddb database
// (`webhost-sync:<customer id>:dispatch`). Edits made offline there and never synced would be lost
// with it: its content is merged into the document once, as a local change (sent, counted pending and
// acknowledged like any other edit; what the server has already is a no-op), then the database goes.
async function adoptEarlierStore (synced, dbName) {
  if (typeof indexedDB === 'undefined' || typeof indexedDB.databases !== 'function') return
  if (!(await indexedDB.databases()).some((info) => info.name === dbName)) return
  await synced.whenLoaded
  const earlier = new IndexeddbPersistence(dbName, synced.doc)
  await earlier.whenSynced
  await earlier.clearData()
}

window.addEventListener('online', refreshStatus)
window.addEventListener('offline', refreshStatus)

// --- map -------------------------------------------------------------------------------------------

let map = null
let vehicleLayer = null
let fenceLayer = null
let eventLayer = null
let historyLayer = null
let drawLayer = null
let vehicleRenderer = null

function ensureMap () {
  if (map) return
  map = L.map('map', { zoomControl: true, keyboard: true, preferCanvas: true }).setView([52.52, 13.405], 12)
  if (config.tileUrl) {
    L.tileLayer(config.tileUrl, { attribution: config.attribution || '', maxZoom: 19 }).addTo(map)
  } else {
    map.attributionControl.addAttribution('no map tiles configured')
    $('map').classList.add('no-tiles')
  }
  fenceLayer = L.layerGroup().addTo(map)
  eventLayer = L.layerGroup().addTo(map)
  historyLayer = L.layerGroup().addTo(map)
  drawLayer = L.layerGroup().addTo(map)
  vehicleLayer = L.layerGroup().addTo(map)
  map.createPane('vehicles').style.zIndex = 450 // above shapes and trails (overlayPane: 400)
  vehicleRenderer = L.canvas({ padding: 0.2, pane: 'vehicles' }) // vehicles on a canvas of their own
  map.on('click', onMapClick)
  app.map = map
}

const plain = (v) => (v instanceof Y.Map ? v.toJSON() : v)
const timeOf = (t) => (typeof t === 'number' ? t : Date.parse(t))
const fmtTime = (ms) => (Number.isFinite(ms) ? new Date(ms).toLocaleString() : '–')

function statusOf (v, now) {
  const t = timeOf(v.t ?? v.time)
  if (!Number.isFinite(t)) return 'offline'
  const age = now - t
  return age > OFFLINE_MS ? 'offline' : age > STALE_MS ? 'stale' : 'live'
}

function vehicleOf (id, raw, now) {
  const v = plain(raw)
  if (typeof v !== 'object' || v === null || typeof v.lat !== 'number' || typeof v.lng !== 'number') return null
  return { ...v, id, name: String(v.name || id), status: statusOf(v, now) }
}

function vehicles () {
  const now = Date.now()
  const out = []
  for (const [id, raw] of app.fleet.getMap('live').entries()) {
    const v = vehicleOf(id, raw, now)
    if (v) out.push(v)
  }
  return out.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }))
}

// Vehicles are drawn on the map's canvas (one canvas for all of them: 500 DOM markers moving every
// second cost twice the frame time, measured in bench/webapp_fleet.py): an arrow turned to the
// heading (a dot without one), coloured by live / stale / offline, ringed when selected.
const STATUS_COLOR = { live: '#16a34a', stale: '#ca8a04', offline: '#6b7280' }
const VehicleMarker = L.CircleMarker.extend({
  options: { radius: 10, heading: null, status: 'live', selected: false },
  setLook (v, selected) {
    const heading = typeof v.heading === 'number' ? v.heading : null
    const o = this.options
    if (o.heading === heading && o.status === v.status && o.selected === selected) return
    Object.assign(o, { heading, status: v.status, selected })
    this.redraw()
  },
  _updatePath () { this._renderer._updateVehicle(this) }
})
L.Canvas.include({
  _updateVehicle (layer) {
    if (!this._drawing || layer._empty()) return
    const p = layer._point
    const o = layer.options
    const ctx = this._ctx
    ctx.save()
    ctx.translate(p.x, p.y)
    if (o.selected) {
      ctx.beginPath()
      ctx.arc(0, 0, 13, 0, 2 * Math.PI)
      ctx.strokeStyle = '#2563eb'
      ctx.lineWidth = 3
      ctx.stroke()
    }
    ctx.beginPath()
    if (o.heading === null) ctx.arc(0, 0, 6, 0, 2 * Math.PI)
    else {
      ctx.rotate((o.heading * Math.PI) / 180)
      ctx.moveTo(0, -10); ctx.lineTo(7, 8); ctx.lineTo(0, 4); ctx.lineTo(-7, 8); ctx.closePath()
    }
    ctx.fillStyle = STATUS_COLOR[o.status] || STATUS_COLOR.offline
    ctx.strokeStyle = '#ffffff'
    ctx.lineWidth = 1.5
    ctx.fill()
    ctx.stroke()
    ctx.restore()
  }
})

function placeMarker (v) {
  let m = app.markers.get(v.id)
  if (!m) {
    m = new VehicleMarker([v.lat, v.lng], { renderer: vehicleRenderer })
    m.bindTooltip(v.name, { direction: 'top', offset: [0, -10] })
    m.on('click', () => select(v.id))
    m.addTo(vehicleLayer)
    app.markers.set(v.id, m)
  } else {
    const at = m.getLatLng()
    if (at.lat !== v.lat || at.lng !== v.lng) m.setLatLng([v.lat, v.lng])
  }
  m.setLook(v, v.id === app.selected)
  const trail = app.trails.get(v.id) || { points: [], line: null }
  const last = trail.points[trail.points.length - 1]
  if (!last || last[0] !== v.lat || last[1] !== v.lng) {
    trail.points.push([v.lat, v.lng])
    if (trail.points.length > TRAIL_POINTS) trail.points.shift()
    if (trail.points.length > 1) {
      if (!trail.line) trail.line = L.polyline(trail.points, { color: '#2563eb', weight: 2, opacity: 0.5, interactive: false }).addTo(vehicleLayer)
      else trail.line.setLatLngs(trail.points)
    }
  }
  app.trails.set(v.id, trail)
}

function dropMarker (id) {
  const m = app.markers.get(id)
  if (m) { m.remove(); app.markers.delete(id) }
  const trail = app.trails.get(id)
  if (trail && trail.line) trail.line.remove()
  app.trails.delete(id)
}

// Only the vehicles an update changed are touched (500 vehicles moving every second stay cheap);
// `all` (first render, the 15 s status sweep, a selection) walks every one.
function renderMarkers (keys) {
  const live = app.fleet.getMap('live')
  const now = Date.now()
  if (!app.framed && live.size) { // the first vehicles seen: show them (afterwards the dispatcher decides)
    const list = vehicles()
    if (list.length) {
      app.framed = true
      map.fitBounds(L.latLngBounds(list.map((v) => [v.lat, v.lng])).pad(0.2), { maxZoom: 15, animate: false })
    }
  }
  const ids = keys === 'all' ? new Set([...live.keys(), ...app.markers.keys()]) : keys
  for (const id of ids) {
    const v = live.has(id) ? vehicleOf(id, live.get(id), now) : null
    if (v) placeMarker(v)
    else dropMarker(id)
  }
  if ($('follow').checked && app.selected) {
    const m = app.markers.get(app.selected)
    if (m) map.panTo(m.getLatLng(), { animate: false })
  }
}

const rows = new Map() // vehicle id -> its list item, reused across renders

function vehicleRow (v) {
  let li = rows.get(v.id)
  if (!li) {
    li = document.createElement('li')
    li.dataset.vehicle = v.id
    const b = document.createElement('button')
    b.type = 'button'
    b.innerHTML = '<span class="badge"></span> <span class="name"></span> <span class="meta"></span>'
    b.addEventListener('click', () => select(v.id))
    li.append(b)
    rows.set(v.id, li)
  }
  const b = li.firstChild
  li.dataset.status = v.status
  b.className = 'vehicle-row' + (v.id === app.selected ? ' selected' : '')
  b.setAttribute('aria-pressed', String(v.id === app.selected))
  const badge = b.querySelector('.badge')
  badge.className = `badge ${v.status}`
  badge.textContent = v.status
  b.querySelector('.name').textContent = v.name
  const speed = typeof v.speed === 'number' ? `${(v.speed * 3.6).toFixed(0)} km/h · ` : ''
  b.querySelector('.meta').textContent = speed + fmtTime(timeOf(v.t))
  return li
}

function renderVehicleList () {
  const list = vehicles()
  const q = $('vehicle-search').value.trim().toLowerCase()
  const want = $('vehicle-filter').value
  const shown = list.filter((v) => (!q || v.name.toLowerCase().includes(q) || v.id.includes(q)) && (!want || v.status === want))
  $('vehicle-count').textContent = `(${list.length})`
  const items = shown.slice(0, 300).map(vehicleRow)
  if (!items.length) {
    const li = document.createElement('li')
    li.className = 'empty'
    li.textContent = list.length ? 'no vehicle matches' : 'no vehicle has reported yet'
    items.push(li)
  }
  const ul = $('vehicle-list')
  if (items.length !== ul.children.length || items.some((li, i) => ul.children[i] !== li)) ul.replaceChildren(...items)
  for (const id of rows.keys()) if (!app.fleet.getMap('live').has(id)) rows.delete(id)
  for (const sel of [$('task-vehicle'), $('history-vehicle')]) fillVehicleSelect(sel, list)
}

function fillVehicleSelect (sel, list) {
  const current = sel.value
  const ids = list.map((v) => v.id).join('|')
  if (sel.dataset.ids === ids) return
  sel.dataset.ids = ids
  const opts = sel.id === 'task-vehicle' ? [new Option('none', '')] : []
  for (const v of list) opts.push(new Option(v.name, v.id))
  sel.replaceChildren(...opts)
  if (current) sel.value = current
}

function select (id) {
  const before = app.selected
  app.selected = id
  app.presence.setLocalStateField('viewing', id)
  const m = app.markers.get(id)
  if (m) map.panTo(m.getLatLng())
  $('history-vehicle').value = id
  scheduleRender('vehicles', [before, id].filter(Boolean))
  scheduleRender('list')
}

// What changed since the last frame; one render per animation frame at most.
const dirty = { vehicles: new Set(), all: true, list: true, feed: true, presence: true, notes: true, tasks: true }
let renderQueued = false
let listRendered = 0
const LIST_EVERY_MS = 1000 // the list (text) follows at most once a second; the map every frame

function scheduleRender (part = 'all', keys = null) {
  if (part === 'all') Object.assign(dirty, { all: true, list: true, feed: true, presence: true, notes: true, tasks: true })
  else if (part === 'vehicles') { for (const k of keys) dirty.vehicles.add(k); dirty.list = true } else dirty[part] = true
  if (renderQueued) return
  renderQueued = true
  requestAnimationFrame(renderAll)
}

function renderAll () {
  renderQueued = false
  if (!app.fleet) return
  if (dirty.all) renderMarkers('all')
  else if (dirty.vehicles.size) renderMarkers(dirty.vehicles)
  dirty.vehicles = new Set()
  if (dirty.list || dirty.all) {
    const wait = listRendered + LIST_EVERY_MS - Date.now()
    if (wait <= 0 || dirty.all) { renderVehicleList(); listRendered = Date.now(); dirty.list = false } else setTimeout(() => scheduleRender('list'), wait)
  }
  dirty.all = false
  if (dirty.feed) { renderFeed(); dirty.feed = false }
  if (dirty.presence) { renderDispatchers(); dirty.presence = false }
  if (dirty.notes) { renderNotes(); dirty.notes = false }
  if (dirty.tasks) { renderTasks(); dirty.tasks = false }
  app.rendered = (app.rendered || 0) + 1
}

$('vehicle-search').addEventListener('input', () => scheduleRender('list'))
$('vehicle-filter').addEventListener('change', () => scheduleRender('list'))
setInterval(() => scheduleRender('all'), 15000) // live -> stale -> offline as time passes

function bindFleet () {
  app.fleet.getMap('live').observe((event) => scheduleRender('vehicles', event.keysChanged))
  app.fleet.getArray('events').observe(() => scheduleRender('feed'))
  app.fleet.getMap('changes').observe((event) => {
    if (event.keysChanged.has('geofences')) loadGeofences()
  })
}

// --- events feed ------------------------------------------------------------------------------------

function describe (e) {
  const live = app.fleet.getMap('live').get(e.vehicle_id)
  const vehicle = (live && plain(live).name) || e.vehicle_id || ''
  if (e.type === 'geofence_enter' || e.type === 'geofence_exit') {
    const fence = app.geofences.get(e.geofence_id)
    return `${vehicle} ${e.type === 'geofence_enter' ? 'entered' : 'left'} ${fence ? fence.name : 'a geofence'}`
  }
  return `${vehicle} ${EVENT_LABELS[e.type] || String(e.type).replace(/[._]/g, ' ')}`
}

// The events issue's types (tracking/fleet_events.py); anything else is shown by its name.
const EVENT_LABELS = {
  'device.offline': 'went offline',
  'device.online': 'is back online',
  'overspeed.started': 'is speeding',
  'trip.started': 'started a trip',
  'trip.ended': 'ended a trip',
  'stop.started': 'stopped',
  'stop.ended': 'moved on',
  'quota.reached': 'reached the GPS quota'
}

function renderFeed () {
  const all = app.fleet.getArray('events').toArray().filter((e) => e && typeof e === 'object')
  const retracted = new Set(all.map((e) => e.retracts).filter(Boolean)) // "<type>.retracted" undoes an entry
  const events = all.filter((e) => !e.retracts && !retracted.has(e.id)).slice(-FEED_SHOWN).reverse()
  const items = events.map((e) => {
    const li = document.createElement('li')
    li.dataset.type = e.type
    li.dataset.event = e.id
    li.className = `event ${e.type}`
    li.innerHTML = '<time></time> <span class="what"></span>'
    li.querySelector('time').textContent = fmtTime(e.t)
    li.querySelector('.what').textContent = describe(e)
    return li
  })
  if (!items.length) {
    const li = document.createElement('li')
    li.className = 'empty'
    li.textContent = 'no events yet'
    items.push(li)
  }
  $('event-feed').replaceChildren(...items)
  eventLayer.clearLayers()
  for (const e of events.slice(0, 20)) {
    if (typeof e.lat === 'number' && typeof e.lng === 'number') {
      L.circleMarker([e.lat, e.lng], { radius: 5, color: e.type === 'geofence_enter' ? '#16a34a' : e.type === 'geofence_exit' ? '#dc2626' : '#0891b2', weight: 2, fillOpacity: 0.6 })
        .bindTooltip(describe(e)).addTo(eventLayer)
    }
  }
}

// --- presence ---------------------------------------------------------------------------------------

function renderDispatchers () {
  if (!app.presence) return
  const items = []
  for (const [client, state] of app.presence.getStates()) {
    if (!state || !state.user) continue
    const li = document.createElement('li')
    li.dataset.client = String(client)
    const dot = document.createElement('span')
    dot.className = 'swatch'
    dot.style.background = /^#[0-9a-f]{6}$/i.test(state.user.color) ? state.user.color : '#999'
    const viewing = state.viewing ? app.fleet.getMap('live').get(state.viewing) : null
    const label = document.createElement('span')
    label.textContent = `${state.user.name || '?'}${client === app.fleet.clientID ? ' (you)' : ''}` +
      (state.viewing ? ` · looking at ${(viewing && plain(viewing).name) || state.viewing}` : '')
    li.append(dot, label)
    items.push(li)
  }
  $('dispatchers').replaceChildren(...items)
}

// --- notes and tasks --------------------------------------------------------------------------------

const uid = () => (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`)
const myName = () => app.session.user.name || app.session.user.email

function bindDispatch () {
  app.dispatch.getArray('notes').observe(() => scheduleRender('notes'))
  app.dispatch.getMap('tasks').observeDeep(() => scheduleRender('tasks'))
}

$('note-form').addEventListener('submit', (e) => {
  e.preventDefault()
  const text = $('note-text').value.trim()
  if (!text || !app.session.can_write) return
  app.dispatch.getArray('notes').push([{ id: uid(), text: text.slice(0, 2000), by: myName(), at: Date.now() }])
  $('note-text').value = ''
})

function renderNotes () {
  const notes = app.dispatch.getArray('notes').toArray().slice(-200).reverse()
  $('notes').replaceChildren(...notes.map((n) => {
    const li = document.createElement('li')
    li.className = 'note-item'
    li.innerHTML = '<span class="text"></span> <span class="meta"></span>'
    li.querySelector('.text').textContent = String(n.text ?? '')
    li.querySelector('.meta').textContent = `${n.by || ''} · ${fmtTime(n.at)}`
    return li
  }))
}

$('task-form').addEventListener('submit', (e) => {
  e.preventDefault()
  const title = $('task-title').value.trim()
  if (!title || !app.session.can_write) return
  const task = new Y.Map()
  app.dispatch.transact(() => {
    app.dispatch.getMap('tasks').set(uid(), task)
    task.set('title', title.slice(0, 300))
    task.set('vehicle_id', $('task-vehicle').value || null)
    task.set('driver', $('task-driver').value.trim().slice(0, 200))
    task.set('status', 'open')
    task.set('by', myName())
    task.set('at', Date.now())
  })
  $('task-title').value = ''
  $('task-driver').value = ''
})

const TASK_STATES = ['open', 'en route', 'done']

function renderTasks () {
  const tasks = [...app.dispatch.getMap('tasks').entries()].filter(([, t]) => t instanceof Y.Map).sort((a, b) => (b[1].get('at') || 0) - (a[1].get('at') || 0))
  const live = app.fleet.getMap('live')
  $('tasks').replaceChildren(...tasks.slice(0, 200).map(([id, t]) => {
    const li = document.createElement('li')
    li.dataset.task = id
    li.dataset.status = t.get('status')
    const vid = t.get('vehicle_id')
    const v = vid ? live.get(vid) : null
    const title = document.createElement('span')
    title.className = 'text'
    title.textContent = String(t.get('title') ?? '')
    const meta = document.createElement('span')
    meta.className = 'meta'
    meta.textContent = [vid ? `vehicle ${(v && plain(v).name) || vid}` : '', t.get('driver') ? `driver ${t.get('driver')}` : ''].filter(Boolean).join(' · ')
    const label = document.createElement('label')
    label.textContent = 'Status '
    const sel = document.createElement('select')
    for (const s of TASK_STATES) sel.append(new Option(s, s))
    sel.value = t.get('status')
    sel.disabled = !app.session.can_write
    sel.addEventListener('change', () => t.set('status', sel.value))
    label.append(sel)
    li.append(title, ' ', meta, ' ', label)
    return li
  }))
}

// --- geofences --------------------------------------------------------------------------------------

async function loadGeofences () {
  const all = []
  let cursor = null
  try {
    do {
      const page = await api('GET', `/api/v1/geofences?limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`)
      all.push(...page.data)
      cursor = page.next_cursor
    } while (cursor && all.length < 2000)
  } catch (err) {
    $('geofence-error').textContent = `Geofences could not be loaded: ${err.message}`
    return
  }
  app.geofences = new Map(all.map((g) => [g.id, g]))
  renderGeofences()
  scheduleRender()
}

function renderGeofences () {
  fenceLayer.clearLayers()
  const items = []
  for (const g of app.geofences.values()) {
    const style = { color: g.active ? '#7c3aed' : '#9ca3af', weight: 2, fillOpacity: 0.08 }
    const shape = g.kind === 'circle'
      ? L.circle([g.center.lat, g.center.lng], { radius: g.radius_meters, ...style })
      : L.polygon(g.polygon.coordinates.map((ring) => ring.map(([lng, lat]) => [lat, lng])), style)
    shape.bindTooltip(g.name)
    shape.on('click', () => editGeofence(g.id))
    shape.addTo(fenceLayer)
    const li = document.createElement('li')
    li.dataset.geofence = g.id
    const name = document.createElement('span')
    name.className = 'name'
    name.textContent = `${g.name} (${g.kind === 'circle' ? `${Math.round(g.radius_meters)} m circle` : 'polygon'})`
    const show = button('Show', () => map.fitBounds(shape.getBounds()))
    const edit = button('Edit', () => editGeofence(g.id))
    const del = button('Delete', () => deleteGeofence(g.id))
    edit.disabled = del.disabled = !app.session.can_write
    li.append(name, ' ', show, edit, del)
    items.push(li)
  }
  $('geofence-count').textContent = `(${app.geofences.size})`
  $('geofence-list').replaceChildren(...items)
}

function button (text, onclick) {
  const b = document.createElement('button')
  b.type = 'button'
  b.textContent = text
  b.addEventListener('click', onclick)
  return b
}

const draw = { mode: null, center: null, points: [], preview: null }

function resetDraw () {
  draw.mode = null
  draw.center = null
  draw.points = []
  drawLayer.clearLayers()
  $('geofence-form').hidden = true
  $('draw-finish').hidden = true
  $('draw-hint').textContent = ''
  $('geofence-id').value = ''
  $('map').classList.remove('drawing')
}

$('draw-circle').addEventListener('click', () => {
  resetDraw()
  draw.mode = 'circle'
  $('map').classList.add('drawing')
  $('draw-hint').textContent = 'Click the map at the circle\'s centre.'
})
$('draw-polygon').addEventListener('click', () => {
  resetDraw()
  draw.mode = 'polygon'
  $('map').classList.add('drawing')
  $('draw-hint').textContent = 'Click the map at each corner, then Finish polygon.'
  $('geofence-form').hidden = false
  $('geofence-radius-label').hidden = true
  $('draw-finish').hidden = false
})
$('draw-cancel').addEventListener('click', resetDraw)
$('geofence-radius').addEventListener('input', () => {
  if (draw.preview && draw.preview.setRadius) draw.preview.setRadius(Number($('geofence-radius').value) || 1)
})

function onMapClick (e) {
  if (draw.mode === 'circle') {
    draw.center = e.latlng
    drawLayer.clearLayers()
    draw.preview = L.circle(e.latlng, { radius: Number($('geofence-radius').value) || 200, color: '#db2777', dashArray: '4' }).addTo(drawLayer)
    $('geofence-form').hidden = false
    $('geofence-radius-label').hidden = false
    $('draw-hint').textContent = 'Name it, set the radius, save.'
    $('geofence-name').focus()
  } else if (draw.mode === 'polygon') {
    draw.points.push(e.latlng)
    drawLayer.clearLayers()
    draw.preview = L.polygon(draw.points, { color: '#db2777', dashArray: '4' }).addTo(drawLayer)
    $('draw-hint').textContent = `${draw.points.length} corner${draw.points.length === 1 ? '' : 's'}; Finish polygon when done.`
  }
}

$('draw-finish').addEventListener('click', () => {
  if (draw.points.length < 3) { $('draw-hint').textContent = 'A polygon needs at least 3 corners.'; return }
  $('geofence-name').focus()
  $('geofence-form').requestSubmit()
})

function editGeofence (id) {
  const g = app.geofences.get(id)
  if (!g || !app.session.can_write) return
  resetDraw()
  draw.mode = 'edit'
  $('geofence-id').value = id
  $('geofence-name').value = g.name
  $('geofence-radius-label').hidden = g.kind !== 'circle'
  if (g.kind === 'circle') $('geofence-radius').value = Math.round(g.radius_meters)
  $('geofence-form').hidden = false
  $('panel-geofences').open = true
  $('draw-hint').textContent = `Editing ${g.name}`
  $('geofence-name').focus()
}

async function deleteGeofence (id) {
  try {
    await api('DELETE', `/api/v1/geofences/${id}`)
    app.geofences.delete(id)
    renderGeofences()
  } catch (err) {
    $('geofence-error').textContent = `Delete failed: ${err.message}`
  }
}

$('geofence-form').addEventListener('submit', async (e) => {
  e.preventDefault()
  $('geofence-error').textContent = ''
  const name = $('geofence-name').value.trim()
  const radius = Number($('geofence-radius').value)
  try {
    let saved
    if (draw.mode === 'edit') {
      const g = app.geofences.get($('geofence-id').value)
      const body = { name }
      if (g.kind === 'circle') body.radius_meters = radius
      saved = await api('PATCH', `/api/v1/geofences/${g.id}`, body)
    } else if (draw.mode === 'circle' && draw.center) {
      saved = await api('POST', '/api/v1/geofences', { kind: 'circle', name, center: { lat: draw.center.lat, lng: draw.center.lng }, radius_meters: radius })
    } else if (draw.mode === 'polygon' && draw.points.length >= 3) {
      const ring = draw.points.map((p) => [p.lng, p.lat])
      ring.push(ring[0])
      saved = await api('POST', '/api/v1/geofences', { kind: 'polygon', name, polygon: { type: 'Polygon', coordinates: [ring] } })
    } else {
      $('geofence-error').textContent = 'Draw a shape on the map first.'
      return
    }
    app.geofences.set(saved.id, saved)
    resetDraw()
    $('geofence-name').value = ''
    renderGeofences()
  } catch (err) {
    $('geofence-error').textContent = `Save failed: ${err.message}`
  }
})

// --- history --------------------------------------------------------------------------------------

const history = { points: [], marker: null, timer: null }
app.history = history
const localInput = (d) => new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16)
$('history-from').value = localInput(new Date(Date.now() - 24 * 3600000))
$('history-to').value = localInput(new Date(Date.now() + 60000))

$('history-form').addEventListener('submit', async (e) => {
  e.preventDefault()
  const vid = $('history-vehicle').value
  const from = new Date($('history-from').value)
  const to = new Date($('history-to').value)
  if (!vid || !(from < to)) { $('history-info').textContent = 'Choose a vehicle and a range whose start is before its end.'; return }
  $('history-info').textContent = 'Loading…'
  const span = `from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`
  try {
    const track = await api('GET', `/api/v1/vehicles/${vid}/positions?format=geojson&${span}`)
    const events = await api('GET', `/api/v1/geofence-events?vehicle_id=${vid}&${span}&limit=1000`)
    showHistory(track.features.map((f) => ({ lat: f.geometry.coordinates[1], lng: f.geometry.coordinates[0], t: Date.parse(f.properties.time), speed: f.properties.speed })), events.data)
  } catch (err) {
    $('history-info').textContent = `History could not be loaded: ${err.message}`
  }
})

$('history-clear').addEventListener('click', () => showHistory([], []))

function showHistory (points, events) {
  clearInterval(history.timer)
  history.points = points
  historyLayer.clearLayers()
  const slider = $('history-slider')
  slider.max = String(Math.max(0, points.length - 1))
  slider.value = '0'
  slider.disabled = points.length === 0
  $('history-play').disabled = points.length === 0
  $('history-info').textContent = points.length ? `${points.length} fixes, ${events.length} geofence events` : 'No fixes in this range.'
  $('history-events').replaceChildren(...events.map((ev) => {
    const fence = app.geofences.get(ev.geofence_id)
    const t = Date.parse(ev.time)
    return Object.assign(document.createElement('li'), {}).appendChild(button(`${fmtTime(t)} ${ev.event} ${fence ? fence.name : ''}`, () => seek(t))).parentNode
  }))
  if (!points.length) return
  const line = L.polyline(points.map((p) => [p.lat, p.lng]), { color: '#ea580c', weight: 3 }).addTo(historyLayer)
  history.marker = L.circleMarker([points[0].lat, points[0].lng], { radius: 8, color: '#111827', weight: 3, fillColor: '#facc15', fillOpacity: 1 }).addTo(historyLayer)
  map.fitBounds(line.getBounds(), { maxZoom: 16 })
  showAt(0)
}

function seek (t) {
  let best = 0
  history.points.forEach((p, i) => { if (Math.abs(p.t - t) < Math.abs(history.points[best].t - t)) best = i })
  $('history-slider').value = String(best)
  showAt(best)
}

function showAt (i) {
  const p = history.points[i]
  if (!p) return
  history.marker.setLatLng([p.lat, p.lng])
  $('history-time').textContent = `${fmtTime(p.t)}${typeof p.speed === 'number' ? ` · ${(p.speed * 3.6).toFixed(0)} km/h` : ''}`
}

$('history-slider').addEventListener('input', (e) => showAt(Number(e.target.value)))
$('history-play').addEventListener('click', () => {
  if (history.timer) { clearInterval(history.timer); history.timer = null; $('history-play').textContent = 'Play'; return }
  $('history-play').textContent = 'Pause'
  history.timer = setInterval(() => {
    const s = $('history-slider')
    const next = Number(s.value) + 1
    if (next > Number(s.max)) { clearInterval(history.timer); history.timer = null; $('history-play').textContent = 'Play'; return }
    s.value = String(next)
    showAt(next)
  }, 100)
})

// --- boot ------------------------------------------------------------------------------------------

async function boot () {
  try {
    const session = await api('GET', '/api/v1/app/session')
    await start(session)
  } catch (err) {
    if (err.status === 401) showSignIn('')
    else { showSignIn(''); $('signin-error').textContent = `The server could not be reached: ${err.message}` }
  }
}

boot()
