// The operator console end to end in real headless Chromium or Firefox (browsers.mjs), against a real server
// (tests/test_console.py sets it up and checks what this prints):
//   a customer user signed in to the dispatcher app opens /admin/ and gets the sign-in form (every
//   operator route answers 401, its API key too); an admin signs in (keyboard), searches a customer,
//   sees its usage bars, changes its plan, starts a migration to a dedicated database and watches
//   it finish, then looks at nodes, events and health; a staff operator finds no usable delete
//   buttons and the server refuses the deletes it sends anyway.
//
//   node test/console.mjs --config console.json    (prints one JSON line; screenshots into config.shots)
import { readFileSync } from 'node:fs'
import { launch } from './browsers.mjs'
import WebSocket from 'ws'

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]])
  return acc
}, []))
const cfg = JSON.parse(readFileSync(args.config, 'utf8'))
const WAIT = 20000
const result = { steps: [], errors: [] }
const step = (name, data = {}) => { result.steps.push(name); Object.assign(result, data) }
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const browser = await launch() // TEST_BROWSER: chromium (default) or firefox
const killer = setTimeout(() => { console.error('console scenario timed out; steps: ' + result.steps.join(', ')); process.exit(3) }, 220000)

async function person (name, width = 1360, height = 900) {
  const context = await browser.newContext({ viewport: { width, height } })
  const page = await context.newPage()
  page.on('pageerror', (e) => result.errors.push(`${name}: ${e}`))
  page.on('console', (m) => {
    if (m.type() === 'error' && !/401|403|Failed to load resource/.test(m.text())) result.errors.push(`${name}: ${m.text()}`)
  })
  page.on('dialog', (d) => d.accept())
  return { name, context, page }
}
const shot = (p, what) => p.page.screenshot({ path: `${cfg.shots}/${what}.png`, fullPage: true })
const status = (p, method, path, body) => p.page.evaluate(async ([method, path, body]) => {
  const headers = { 'Content-Type': 'application/json' }
  const csrf = window.consoleApp && window.consoleApp.session && window.consoleApp.session.csrf_token
  if (csrf) headers['X-CSRF-Token'] = csrf
  const res = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined })
  return res.status
}, [method, path, body])

async function signIn (p, email) {
  await p.page.goto(`${cfg.base}/admin/`)
  await p.page.waitForSelector('#signin-view:not([hidden])', { timeout: WAIT })
  await p.page.fill('#signin-email', email)
  await p.page.fill('#signin-password', cfg.password)
  await p.page.keyboard.press('Enter') // keyboard: the form submits from the password field
  await p.page.waitForSelector('body[data-state="signed-in"]', { timeout: WAIT })
}

async function openCustomer (p, slug) {
  await p.page.fill('#search-q', slug)
  await p.page.press('#search-q', 'Enter')
  await p.page.waitForFunction((s) => {
    const rows = [...document.querySelectorAll('#customer-list .customer-row')]
    return rows.length === 1 && rows[0].dataset.slug === s
  }, slug, { timeout: WAIT })
  const found = await p.page.$$eval('#customer-list .customer-row', (rows) => rows.map((r) => r.dataset.slug))
  await p.page.focus(`#customer-list .customer-row[data-slug="${slug}"]`)
  await p.page.keyboard.press('Enter') // a row is a button: keyboard opens it
  await p.page.waitForSelector('#usage .usage-row', { timeout: WAIT })
  await p.page.waitForSelector('#key-rows tr[data-key]', { timeout: WAIT })
  return found
}

const bars = (p) => p.page.$$eval('#usage [role="meter"]', (meters) => Object.fromEntries(meters.map((m) => [
  document.getElementById(m.getAttribute('aria-labelledby')).textContent,
  { now: Number(m.getAttribute('aria-valuenow')), max: Number(m.getAttribute('aria-valuemax')) }
])))

try {
  // --- a customer user: the dispatcher app's session is no operator ---------------------------
  const user = await person('customer-user')
  const signed = await user.page.request.post(`${cfg.base}/api/v1/app/session`, {
    data: { customer: cfg.customer.slug, email: cfg.user.email, password: cfg.user.password }
  })
  if (signed.status() !== 200) throw new Error('customer user sign-in failed: ' + signed.status())
  await user.page.goto(`${cfg.base}/admin/`)
  await user.page.waitForSelector('#signin-view:not([hidden])', { timeout: WAIT })
  step('customer user refused', {
    customerUser: {
      signInShown: await user.page.isVisible('#signin-form'),
      consoleHidden: await user.page.isHidden('#console-main'),
      customers: await status(user, 'GET', '/api/v1/customers'),
      session: await status(user, 'GET', '/api/v1/operator/session')
    }
  })
  const keyStatus = async (path) => (await user.page.request.get(`${cfg.base}${path}`, { headers: { Authorization: `Bearer ${cfg.customer.key}` } })).status()
  step('customer key refused', { customerKey: { customers: await keyStatus('/api/v1/customers'), nodes: await keyStatus('/api/v1/nodes') } })
  await shot(user, '01-customer-user-sees-sign-in')
  await user.context.close()
  // the customer's app stays connected to its fleet document meanwhile (the nodes list counts it)
  const socket = new WebSocket(`${cfg.ws}/sync/${cfg.customer.slug}/fleet`, [cfg.syncToken])
  await new Promise((resolve, reject) => { socket.once('open', resolve); socket.once('error', reject) })
  socket.on('message', () => {})

  // --- the admin ---------------------------------------------------------------------------------
  const admin = await person('admin')
  await admin.page.goto(`${cfg.base}/admin/`)
  await admin.page.waitForSelector('#signin-view:not([hidden])', { timeout: WAIT })
  await admin.page.fill('#signin-email', cfg.admin)
  await admin.page.fill('#signin-password', 'wrong password')
  await admin.page.keyboard.press('Enter')
  await admin.page.waitForFunction(() => document.getElementById('signin-error').textContent.length > 0, null, { timeout: WAIT })
  await shot(admin, '02-sign-in-wrong-password')
  await signIn(admin, cfg.admin)
  const limits = await admin.page.evaluate(async () => {
    const { data } = await (await fetch('/api/v1/plans')).json()
    return Object.fromEntries(data.map((p) => [p.id, p]))
  })
  const found = await openCustomer(admin, cfg.customer.slug)
  step('found', { found, limits, usageBefore: await bars(admin) })
  await shot(admin, '03-customer-usage')

  await admin.page.selectOption('#plan-select', 'business')
  await admin.page.click('#plan-form button[type="submit"]')
  await admin.page.waitForFunction(() => document.getElementById('plan-result').textContent.startsWith('Plan changed'), null, { timeout: WAIT })
  await admin.page.waitForFunction((max) => {
    const m = document.querySelector('#usage [data-resource="Vehicles"] [role="meter"]')
    return m && Number(m.getAttribute('aria-valuemax')) === max
  }, limits.business.vehicle_limit, { timeout: WAIT })
  step('plan changed', { planResult: await admin.page.textContent('#plan-result'), usageAfter: await bars(admin) })
  await shot(admin, '04-plan-changed')

  // start the move and watch it: the page polls; we sample what it shows
  const statuses = new Set()
  const percents = []
  await admin.page.click('#migrate-dedicated')
  await admin.page.waitForSelector('#migration:not([hidden])', { timeout: WAIT })
  let tookMidShot = false
  const deadline = Date.now() + 120000
  while (Date.now() < deadline) {
    const seen = await admin.page.evaluate(() => ({
      status: document.getElementById('migration-status').textContent,
      pct: Number(document.getElementById('migration-bar').getAttribute('aria-valuenow'))
    }))
    if (seen.status) statuses.add(seen.status)
    if (seen.status && (!percents.length || percents[percents.length - 1] !== seen.pct)) percents.push(seen.pct)
    if (seen.status === 'running' && seen.pct > 0 && !tookMidShot) { tookMidShot = true; await shot(admin, '05-migration-running') }
    if (['switched', 'cleaned', 'failed'].includes(seen.status)) break
    await sleep(100)
  }
  await admin.page.waitForFunction(() => document.getElementById('deploy-mode').textContent.startsWith('Dedicated'), null, { timeout: WAIT }).catch(() => {})
  step('migrated', {
    migration: {
      statuses: [...statuses],
      percents,
      final: await admin.page.textContent('#migration-status'),
      detail: await admin.page.textContent('#migration-detail'),
      mode: await admin.page.textContent('#deploy-mode'),
      steps: await admin.page.$$eval('#migration-steps li', (li) => li.map((x) => x.textContent.trim()))
    }
  })
  await shot(admin, '06-migration-finished')

  // infrastructure: keyboard to the tab link
  await admin.page.click('#tabs a[data-tab="infrastructure"]')
  await admin.page.waitForSelector('#node-rows tr td code', { timeout: WAIT })
  await admin.page.waitForSelector('#event-rows tr:not(.empty)', { timeout: WAIT })
  await admin.page.waitForFunction(() => document.getElementById('health-status').textContent.length > 0, null, { timeout: WAIT })
  step('infrastructure', {
    infrastructure: {
      nodesSource: await admin.page.textContent('#nodes-source'),
      nodes: await admin.page.$$eval('#node-rows tr', (rows) => rows.map((r) => ({
        id: r.querySelector('code') && r.querySelector('code').textContent,
        thisNode: r.textContent.includes('(this node)'),
        connections: Number(r.children[1].textContent),
        rooms: Number(r.children[2].textContent)
      }))),
      eventSteps: await admin.page.$$eval('#event-rows tr td:nth-child(3)', (tds) => [...new Set(tds.map((t) => t.textContent))]),
      health: await admin.page.textContent('#health-status')
    }
  })
  await shot(admin, '07-infrastructure')
  await admin.context.close()
  socket.close()

  // --- staff: the buttons say no, and so does the server ----------------------------------------
  const staff = await person('staff')
  await signIn(staff, cfg.staff)
  await openCustomer(staff, cfg.customer.slug)
  const keyId = await staff.page.getAttribute('#key-rows tr[data-key]', 'data-key')
  step('staff', {
    staff: {
      deleteDisabled: await staff.page.isDisabled('#delete-customer'),
      revokeDisabled: await staff.page.isDisabled('#key-rows tr[data-key] button'),
      deleteStatus: await status(staff, 'DELETE', `/api/v1/customers/${cfg.customer.id}`),
      revokeStatus: await status(staff, 'DELETE', `/api/v1/customers/${cfg.customer.id}/api-keys/${keyId}`),
      migrateStatus: await status(staff, 'POST', `/api/v1/customers/${cfg.customer.id}/migrations`, { to: 'multi_tenant' }),
      stillListed: (await status(staff, 'GET', `/api/v1/customers/${cfg.customer.id}`)) === 200
    }
  })
  await shot(staff, '08-staff-view')
  // a narrow window: the layout stacks
  await staff.page.setViewportSize({ width: 760, height: 900 })
  await shot(staff, '09-staff-narrow')
  await staff.context.close()
} catch (e) {
  console.error(`failed after steps ${result.steps.join(', ')}: ${e.stack || e}`)
  await browser.close()
  process.exit(1)
}
clearTimeout(killer)
await browser.close()
console.log(JSON.stringify(result))
