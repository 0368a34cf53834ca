// Customers: search, create, suspend/reactivate, delete (admin), plan change, usage bars, API keys
// (list, revoke: admin), deployment mode, tenant migrations started and followed live, recommendations.
import { api, query } from './api.js'
import { $, ago, bar, bytes, fill, h, when } from './dom.js'

const POLL_MS = 700
const DONE = new Set(['switched', 'cleaned', 'failed'])
const MODE = { multi_tenant: 'shared database', single_tenant: 'dedicated database' }
const modes = (m) => `${MODE[m.from_mode] || m.from_mode} → ${MODE[m.to_mode] || m.to_mode}`
const STEP_NAMES = {
  migration_retention: 'rows outside the plan\'s retention',
  migration_provision: 'provision the database',
  migration_copy: 'copy rows',
  migration_catch_up: 'catch up on changes',
  migration_switch: 'pause, verify and switch',
  migration_cleanup: 'clean up the source',
  migration_finish: 'finish'
}

export function customersView (state) {
  let selected = null
  let cursor = null
  let polling = null
  let followed = 0 // the current follow loop: an older one still in flight stops at its next step

  const show = (id, on) => { $(id).hidden = !on }

  async function loadPlans () {
    const { data } = await api.get('/api/v1/plans')
    for (const select of document.querySelectorAll('.plan-select')) {
      select.replaceChildren(...data.map((p) => h('option', { value: p.id, text: `${p.name} (${p.id})` })))
    }
  }

  async function search (more = false) {
    const params = { q: $('search-q').value.trim(), status: $('search-status').value, limit: 25, cursor: more ? cursor : '' }
    const page = await api.get('/api/v1/customers' + query(params))
    cursor = page.next_cursor
    const rows = page.data.map((c) => h('li', {},
      h('button', {
        type: 'button',
        class: 'customer-row' + (selected && selected.id === c.id ? ' selected' : ''),
        'data-slug': c.slug,
        'aria-pressed': selected && selected.id === c.id ? 'true' : 'false',
        onclick: () => select(c.id)
      },
      h('span', { class: 'name', text: c.name }),
      h('span', { class: 'meta', text: ` ${c.slug} · ${c.plan_id || 'no plan'}` }),
      c.status === 'suspended' ? h('span', { class: 'badge suspended', text: 'suspended' }) : null)))
    if (more) $('customer-list').append(...rows)
    else fill($('customer-list'), rows, 'No customer matches.')
    show('more-customers', !!cursor)
  }

  async function select (id) {
    stopPolling()
    const customer = await api.get(`/api/v1/customers/${id}`)
    selected = customer
    show('no-selection', false)
    show('customer-detail', true)
    $('detail-name').textContent = customer.name
    $('detail-status').textContent = customer.status
    $('detail-status').className = 'badge ' + customer.status
    $('detail-meta').textContent = `${customer.slug} · ${customer.email || 'no email'} · since ${when(customer.created_at)}`
    show('suspend', customer.status === 'active')
    show('reactivate', customer.status === 'suspended')
    $('detail-error').textContent = ''
    $('plan-error').textContent = ''
    $('plan-result').textContent = ''
    $('migrate-error').textContent = ''
    for (const b of document.querySelectorAll('.customer-row')) {
      const on = b.dataset.slug === customer.slug
      b.classList.toggle('selected', on)
      b.setAttribute('aria-pressed', on ? 'true' : 'false')
    }
    await Promise.all([usage(), keys(), deployment(), recommendations()])
  }

  async function usage () {
    const u = await api.get(`/api/v1/customers/${selected.id}/usage`)
    $('plan-select').value = u.plan_id
    fill($('usage'), [
      bar('Vehicles', u.vehicles.used, u.vehicles.limit),
      bar('Drivers', u.drivers.used, u.drivers.limit),
      bar('Geofences', u.geofences.used, u.geofences.limit),
      bar('GPS points today', u.gps_points_today.used, u.gps_points_today.limit),
      bar('Open connections', u.connections.used, u.connections.limit),
      h('p', { class: 'meta', text: `Document storage ${bytes(u.storage_bytes)} · frames refused as too big today: ${u.sync_frames_too_big_today}` })
    ])
    $('usage').dataset.plan = u.plan_id
  }

  async function keys () {
    const page = await api.get(`/api/v1/customers/${selected.id}/api-keys` + query({ include_revoked: $('keys-revoked').checked ? 'true' : '', limit: 100 }))
    fill($('key-rows'), page.data.map((k) => h('tr', { 'data-key': k.id },
      h('td', { text: k.name }),
      h('td', {}, h('code', { text: k.prefix + '…' }), ` ${k.environment}`),
      h('td', { text: k.permissions.join(', ') }),
      h('td', { text: when(k.last_used_at) }),
      h('td', { text: k.revoked_at ? `revoked ${when(k.revoked_at)}` : 'active' }),
      h('td', {}, k.revoked_at
        ? null
        : h('button', {
          type: 'button',
          class: 'danger',
          disabled: !state.canDelete,
          title: state.canDelete ? null : 'admin operators only',
          'aria-label': `Revoke key ${k.name}`,
          onclick: () => revoke(k)
        }, 'Revoke')))), 'No API keys.')
  }

  async function revoke (k) {
    if (!window.confirm(`Revoke key "${k.name}" (${k.prefix}…)? Clients using it are refused at once.`)) return
    $('keys-error').textContent = ''
    try {
      await api.del(`/api/v1/customers/${selected.id}/api-keys/${k.id}`)
    } catch (e) { $('keys-error').textContent = e.message }
    await keys()
  }

  async function deployment () {
    const [deps, migs] = await Promise.all([
      api.get('/api/v1/deployments' + query({ customer_id: selected.id })),
      api.get(`/api/v1/customers/${selected.id}/migrations`)
    ])
    const live = deps.data.filter((d) => !['decommissioned', 'failed'].includes(d.status))
    const current = live[live.length - 1]
    const mode = selected.deployment_mode
    $('deploy-mode').textContent = mode === 'single_tenant'
      ? `Dedicated database${current ? ` (${current.infrastructure}, ${current.status})` : ''}.`
      : 'Shared database (multi-tenant).'
    const running = migs.data.find((m) => m.status === 'running')
    $('migrate-dedicated').hidden = mode === 'single_tenant'
    $('migrate-shared').hidden = mode !== 'single_tenant'
    for (const id of ['migrate-dedicated', 'migrate-shared']) {
      $(id).disabled = !state.canDelete || !!running
      $(id).title = state.canDelete ? '' : 'admin operators only'
    }
    fill($('migration-list'), migs.data.slice().reverse().map((m) => h('li', {},
      h('button', { type: 'button', class: 'link', onclick: () => follow(m.id) }, modes(m)),
      ' ', h('span', { class: 'badge ' + m.status, text: m.status }),
      h('span', { class: 'meta', text: ` ${when(m.created_at)}${m.pause_ms !== null && m.pause_ms !== undefined ? ` · writes paused ${Math.round(m.pause_ms)} ms` : ''}` }))),
    'No migrations yet.')
    if (running) follow(running.id)
  }

  async function migrate (to) {
    $('migrate-error').textContent = ''
    const where = to === 'single_tenant' ? 'a dedicated database' : 'the shared database'
    if (!window.confirm(`Move ${selected.slug} to ${where}? Its data is copied live; writes pause briefly at the switch.`)) return
    try {
      const mig = await api.post(`/api/v1/customers/${selected.id}/migrations`, { to, infrastructure: 'local' })
      await follow(mig.id)
      await deployment()
    } catch (e) { $('migrate-error').textContent = e.message }
  }

  function stopPolling () {
    followed++
    if (polling) { clearTimeout(polling); polling = null }
  }

  async function follow (migrationId) {
    stopPolling()
    const loop = followed
    const customerId = selected.id
    show('migration', true)
    const tick = async () => {
      if (loop !== followed || !selected || selected.id !== customerId) return
      let mig
      try { mig = await api.get(`/api/v1/customers/${customerId}/migrations/${migrationId}`) } catch (e) {
        $('migration-detail').textContent = e.message
        if (loop === followed) polling = setTimeout(tick, POLL_MS * 3)
        return
      }
      if (loop !== followed) return
      renderMigration(mig)
      if (DONE.has(mig.status)) {
        if (mig.status !== 'failed') {
          selected = await api.get(`/api/v1/customers/${customerId}`)
        }
        if (loop === followed) await deployment()
        return
      }
      polling = setTimeout(tick, POLL_MS)
    }
    await tick()
  }

  function renderMigration (mig) {
    const p = mig.progress || {}
    const finished = mig.status === 'switched' || mig.status === 'cleaned'
    const pct = finished ? 100 : p.total ? Math.min(99, Math.round((p.done / p.total) * 100)) : 0
    $('migration-title').textContent = `Move: ${modes(mig)}`
    $('migration-status').textContent = mig.status
    $('migration-status').className = 'badge ' + mig.status
    const barEl = $('migration-bar')
    barEl.setAttribute('aria-valuenow', String(pct))
    barEl.setAttribute('aria-valuetext', `${pct}%`)
    barEl.dataset.status = mig.status
    barEl.firstElementChild.style.width = pct + '%'
    $('migration-detail').textContent = mig.status === 'failed'
      ? `Failed: ${mig.error || 'see the events'} (the customer stays on its database).`
      : finished
        ? `Done: ${Number(p.done || 0).toLocaleString('en-US')} rows copied${mig.pause_ms !== null && mig.pause_ms !== undefined ? `, writes paused ${Math.round(mig.pause_ms)} ms` : ''}.`
        : `${pct}% · ${Number(p.done || 0).toLocaleString('en-US')} of ${p.total === null || p.total === undefined ? '?' : Number(p.total).toLocaleString('en-US')} rows${p.table ? ` · ${p.table}` : ''}`
    const steps = new Map()
    for (const e of mig.events || []) {
      if (e.step === 'migration_start') continue // its end is the migration's status
      steps.set(e.step, e.status === 'progress' ? 'started' : e.status)
    }
    if (finished) for (const [k, v] of steps) if (v === 'started') steps.set(k, 'succeeded')
    fill($('migration-steps'), [...steps.entries()].map(([step, status]) =>
      h('li', { class: status }, h('span', { class: 'step-mark', 'aria-hidden': 'true', text: status === 'succeeded' ? '✓' : status === 'failed' ? '✗' : '…' }),
        ` ${STEP_NAMES[step] || step.replace(/^migration_/, '')} — ${status}`)))
  }

  async function recommendations () {
    const { data } = await api.get(`/api/v1/customers/${selected.id}/recommendations`)
    fill($('recommendations'), data.slice(-5).reverse().map((r) => h('li', {},
      h('strong', { text: `${MODE[r.mode] || r.mode}, plan ${r.plan}` }),
      r.infrastructure ? h('span', { class: 'meta', text: ` (${r.infrastructure})` }) : null,
      h('div', { class: 'meta', text: `${r.reason || ''} (${r.trigger}, ${when(r.created_at)})` }))),
    'No recommendation recorded yet.')
  }

  async function guarded (fn, errorId) {
    $(errorId).textContent = ''
    try { await fn() } catch (e) { $(errorId).textContent = e.message }
  }

  // --- wiring ----------------------------------------------------------------------------------
  $('customer-search').addEventListener('submit', (ev) => { ev.preventDefault(); guarded(() => search(), 'detail-error') })
  $('more-customers').addEventListener('click', () => guarded(() => search(true), 'detail-error'))
  $('keys-revoked').addEventListener('change', () => guarded(keys, 'keys-error'))
  $('suspend').addEventListener('click', () => guarded(async () => {
    await api.post(`/api/v1/customers/${selected.id}/suspend`)
    await select(selected.id)
    await search()
  }, 'detail-error'))
  $('reactivate').addEventListener('click', () => guarded(async () => {
    await api.post(`/api/v1/customers/${selected.id}/reactivate`)
    await select(selected.id)
    await search()
  }, 'detail-error'))
  $('delete-customer').addEventListener('click', () => guarded(async () => {
    if (!window.confirm(`Delete ${selected.slug} and everything it owns? This cannot be undone.`)) return
    await api.del(`/api/v1/customers/${selected.id}`)
    selected = null
    show('customer-detail', false)
    show('no-selection', true)
    await search()
  }, 'detail-error'))
  $('plan-form').addEventListener('submit', (ev) => {
    ev.preventDefault()
    guarded(async () => {
      const plan = $('plan-select').value
      try {
        await api.post(`/api/v1/customers/${selected.id}/plan`, { plan_id: plan })
      } catch (e) {
        if (e.code === 'downgrade_exceeds_limits') {
          const over = (e.details.violations || []).map((v) => `${v.resource} ${v.usage} > ${v.limit}`).join(', ')
          throw new Error(`Cannot move to ${plan}: usage exceeds its limits (${over}).`)
        }
        throw e
      }
      $('plan-result').textContent = `Plan changed to ${plan}.`
      await usage()
      await recommendations()
      await search()
    }, 'plan-error')
  })
  $('migrate-dedicated').addEventListener('click', () => migrate('single_tenant'))
  $('migrate-shared').addEventListener('click', () => migrate('multi_tenant'))
  $('reevaluate').addEventListener('click', () => guarded(async () => {
    await api.post('/api/v1/provisioning/recommendation', { customer_id: selected.id })
    await recommendations()
  }, 'migrate-error'))
  $('create-form').addEventListener('submit', (ev) => {
    ev.preventDefault()
    guarded(async () => {
      const body = { slug: $('create-slug').value.trim(), name: $('create-name').value.trim(), plan_id: $('create-plan').value }
      if ($('create-email').value.trim()) body.email = $('create-email').value.trim()
      const created = await api.post('/api/v1/customers', body)
      $('created-slug').textContent = created.customer.slug
      $('created-key-value').textContent = created.api_key.key
      show('created-key', true)
      $('create-form').reset()
      $('search-q').value = created.customer.slug
      await search()
      await select(created.customer.id)
    }, 'create-error')
  })

  return {
    async start () {
      $('staff-note').hidden = state.canDelete
      $('delete-customer').disabled = !state.canDelete
      $('delete-customer').title = state.canDelete ? '' : 'admin operators only'
      await loadPlans()
      await search()
    },
    stop () { stopPolling(); selected = null; show('customer-detail', false); show('no-selection', true) },
    ago
  }
}
