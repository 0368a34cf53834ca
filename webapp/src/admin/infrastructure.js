// Infrastructure: readiness (/readyz), the live nodes (Redis heartbeats: connections, rooms), every
// deployment, and the infrastructure events of all customers, refreshed while the tab is shown.
import { api, query } from './api.js'
import { $, ago, fill, h, number, when } from './dom.js'

const REFRESH_MS = 5000

export function infrastructureView () {
  let timer = null
  let running = 0 // the current refresh loop (a stopped one ends at its next step)
  let oldest = null

  async function health () {
    const res = await fetch('/readyz', { headers: { Accept: 'application/json' } })
    const body = await res.json()
    $('health-status').textContent = body.status
    $('health-status').className = 'badge ' + body.status
    fill($('health-checks'), Object.entries(body.checks).map(([name, c]) => h('li', { class: c.ok ? 'ok' : 'bad' },
      h('span', { class: 'step-mark', 'aria-hidden': 'true', text: c.ok ? '✓' : '✗' }),
      ` ${name}: ${c.ok ? 'ok' : c.error || 'failing'}${c.required === false ? ' (optional)' : ''}`)))
  }

  async function nodes () {
    const body = await api.get('/api/v1/nodes')
    $('nodes-source').textContent = {
      redis: '(live heartbeats)',
      local: '(single node, no Redis)',
      redis_unreachable: '(Redis unreachable: this node only)'
    }[body.source] || ''
    fill($('node-rows'), body.nodes.map((n) => h('tr', {},
      h('td', {}, h('code', { text: n.id }), n.this_node ? h('span', { class: 'meta', text: ' (this node)' }) : null),
      h('td', { class: 'num', text: number(n.connections) }),
      h('td', { class: 'num', text: number(n.rooms) }),
      h('td', { text: ago(n.beat_at) }))), 'No node is beating.')
  }

  async function deployments () {
    const [deps, customers] = await Promise.all([api.get('/api/v1/deployments'), slugs()])
    fill($('deployment-rows'), deps.data.slice().reverse().map((d) => h('tr', {},
      h('td', { text: customers.get(d.customer_id) || d.customer_id.slice(0, 8) }),
      h('td', { text: d.mode === 'single_tenant' ? 'dedicated' : 'shared' }),
      h('td', { text: [d.infrastructure, d.region].filter(Boolean).join(' · ') }),
      h('td', {}, h('span', { class: 'badge ' + d.status, text: d.status })))), 'No deployments.')
  }

  async function slugs () {
    const page = await api.get('/api/v1/customers' + query({ limit: 100 }))
    return new Map(page.data.map((c) => [c.id, c.slug]))
  }

  function eventRow (e) {
    const data = e.data || {}
    const detail = e.error || Object.entries(data)
      .filter(([k, v]) => !['migration_id', 'tables'].includes(k) && (typeof v !== 'object' || v === null))
      .map(([k, v]) => `${k}=${v}`).join(' ')
    return h('tr', { class: e.status },
      h('td', { text: when(e.created_at) }),
      h('td', { text: e.customer_slug || e.customer_id.slice(0, 8) }),
      h('td', { text: e.step }),
      h('td', {}, h('span', { class: 'badge ' + e.status, text: e.status })),
      h('td', { class: 'detail', text: detail }))
  }

  async function events (older = false) {
    const page = await api.get('/api/v1/infrastructure-events' + query({ limit: 50, before: older ? oldest : '' }))
    const rows = page.data.map(eventRow)
    if (older) $('event-rows').append(...rows)
    else fill($('event-rows'), rows, 'No infrastructure events yet.')
    if (page.data.length) oldest = page.data[page.data.length - 1].id
    $('more-events').hidden = page.data.length < 50
  }

  async function refresh () {
    await Promise.allSettled([health(), nodes(), deployments(), events()])
  }

  $('infra-refresh').addEventListener('click', refresh)
  $('more-events').addEventListener('click', () => events(true))

  return {
    async start () {
      this.stop()
      const mine = ++running
      const loop = async () => {
        if (mine !== running) return
        await refresh()
        if (mine === running) timer = setTimeout(loop, REFRESH_MS)
      }
      await loop()
    },
    stop () {
      running++
      if (timer) clearTimeout(timer)
      timer = null
    }
  }
}
