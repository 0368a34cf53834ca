// Dispatcher dashboard: one tenant's `fleet` document over y-websocket.
//   live   Y.Map  vehicle id -> {lat, lng, t, speed, heading, name?} (written by the server's tracking pipeline)
//   notes  Y.Array of {text, by, at}   (written by dispatchers, merged live)
// Presence (who is watching) travels as awareness: {user: {name, color}}.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const params = new URLSearchParams(location.search)
const server = params.get('server') || 'ws://127.0.0.1:8080'
const customer = params.get('customer') || ''
const token = params.get('token') || ''
const name = params.get('name') || 'Dispatcher'
const COLORS = ['#2563eb', '#16a34a', '#db2777', '#ea580c', '#7c3aed', '#0891b2']

const doc = new Y.Doc()
const live = doc.getMap('live')
const notes = doc.getArray('notes')
const provider = new WebsocketProvider(`${server}/sync/${encodeURIComponent(customer)}`, 'fleet', doc, { params: { token } })
provider.awareness.setLocalStateField('user', { name, color: COLORS[doc.clientID % COLORS.length] })

const $ = (id) => document.getElementById(id)
$('customer').textContent = customer

function setStatus (state, text) {
  $('status').dataset.state = state
  $('status').textContent = text
}
provider.on('status', ({ status }) => {
  if ($('status').dataset.state !== 'refused') setStatus(status, status)
})
provider.on('connection-close', (event) => {
  // 4400-4499: the server refused us (bad token, no access); y-websocket stops retrying.
  if (event && event.code >= 4400 && event.code < 4500) setStatus('refused', `refused: ${event.reason || event.code}`)
})

const plain = (v) => (v instanceof Y.Map ? v.toJSON() : v)
const fmt = (n, digits) => (typeof n === 'number' ? n.toFixed(digits) : '–')
const when = (t) => {
  if (t === undefined || t === null) return '–'
  const d = new Date(typeof t === 'number' ? t : Date.parse(t))
  return isNaN(d) ? String(t) : d.toISOString().replace('T', ' ').slice(0, 19)
}

function cell (text) {
  const td = document.createElement('td')
  td.textContent = text
  return td
}

function renderVehicles () {
  const rows = [...live.entries()].map(([id, v]) => ({ id, ...plain(v) })).sort((a, b) => String(a.name || a.id).localeCompare(String(b.name || b.id)))
  const body = $('vehicles')
  body.replaceChildren()
  if (rows.length === 0) {
    const tr = document.createElement('tr')
    tr.className = 'empty'
    tr.append(cell('no vehicle has reported yet'))
    tr.firstChild.colSpan = 5
    body.append(tr)
  }
  for (const r of rows) {
    const tr = document.createElement('tr')
    tr.dataset.vehicle = r.id
    tr.append(cell(r.name || r.id), cell(fmt(r.lat, 5)), cell(fmt(r.lng, 5)),
      cell(typeof r.speed === 'number' ? (r.speed * 3.6).toFixed(0) : '–'), cell(when(r.t ?? r.time)))
    body.append(tr)
  }
  renderMap(rows.filter((r) => typeof r.lat === 'number' && typeof r.lng === 'number'))
}

function renderMap (rows) {
  const svg = $('map')
  svg.replaceChildren()
  if (rows.length === 0) return
  const lats = rows.map((r) => r.lat); const lngs = rows.map((r) => r.lng)
  const pad = 0.01
  const [minLat, maxLat] = [Math.min(...lats) - pad, Math.max(...lats) + pad]
  const [minLng, maxLng] = [Math.min(...lngs) - pad, Math.max(...lngs) + pad]
  const ns = 'http://www.w3.org/2000/svg'
  for (const r of rows) {
    const x = 20 + ((r.lng - minLng) / (maxLng - minLng)) * 560
    const y = 240 - ((r.lat - minLat) / (maxLat - minLat)) * 220
    const c = document.createElementNS(ns, 'circle')
    c.setAttribute('cx', x.toFixed(1)); c.setAttribute('cy', y.toFixed(1)); c.setAttribute('r', 6)
    const label = document.createElementNS(ns, 'text')
    label.setAttribute('x', (x + 9).toFixed(1)); label.setAttribute('y', (y + 4).toFixed(1))
    label.textContent = r.name || r.id.slice(0, 8)
    svg.append(c, label)
  }
}

function renderDispatchers () {
  const list = $('dispatchers')
  list.replaceChildren()
  for (const [clientId, state] of provider.awareness.getStates()) {
    const user = state && state.user
    if (!user || typeof user.name !== 'string') continue
    const li = document.createElement('li')
    li.dataset.client = String(clientId)
    const dot = document.createElement('span')
    dot.className = 'dot'
    dot.style.background = typeof user.color === 'string' ? user.color : '#6b7280'
    li.append(dot, document.createTextNode(user.name + (clientId === doc.clientID ? ' (you)' : '')))
    list.append(li)
  }
}

function renderNotes () {
  const list = $('notes')
  list.replaceChildren()
  for (const n of notes.toArray().map(plain)) {
    const li = document.createElement('li')
    li.textContent = `${n.text} — ${n.by || '?'}, ${when(n.at)}`
    list.append(li)
  }
}

live.observeDeep(renderVehicles)
notes.observe(renderNotes)
provider.awareness.on('change', renderDispatchers)
$('note-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const text = $('note-text').value.trim()
  if (!text) return
  notes.push([{ text, by: name, at: new Date().toISOString() }])
  $('note-text').value = ''
})
renderVehicles(); renderNotes(); renderDispatchers()

// For scripted checks and the browser console.
window.dashboard = { doc, provider }
