// Drives the dashboard in headless Chromium or Firefox as a dispatcher would: open it, wait for a vehicle to
// appear, add a dispatch note through the form, and report what the page shows as JSON.
//   node test/browser.mjs --url <page url> --vehicle <id> --note <text> [--screenshot file.png] [--timeout ms]
import { launch } from '../../../webapp/test/browsers.mjs'

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]])
  return acc
}, []))
const timeout = Number(args.timeout || 15000)
const browser = await launch() // TEST_BROWSER: chromium (default) or firefox
const deadline = setTimeout(() => { console.error('browser check timed out'); process.exit(3) }, timeout + 10000)
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 620 } })
  const consoleErrors = []
  page.on('pageerror', (e) => consoleErrors.push(String(e)))
  await page.goto(args.url)
  await page.waitForSelector('#status[data-state="connected"]', { timeout })
  if (args.vehicle) await page.waitForSelector(`tr[data-vehicle="${args.vehicle}"]`, { timeout })
  if (args.note) {
    await page.fill('#note-text', args.note)
    await page.click('#note-form button')
    await page.waitForFunction((text) => [...document.querySelectorAll('#notes li')].some((li) => li.textContent.includes(text)), args.note, { timeout })
  }
  if (args['wait-dispatchers']) {
    await page.waitForFunction((n) => document.querySelectorAll('#dispatchers li').length >= n, Number(args['wait-dispatchers']), { timeout })
  }
  // the note is acknowledged by the server once the provider reports it synced with no pending write
  await page.waitForFunction(() => window.dashboard.provider.synced, null, { timeout })
  const shown = await page.evaluate(() => ({
    status: document.getElementById('status').textContent,
    vehicles: [...document.querySelectorAll('#vehicles tr[data-vehicle]')].map((tr) => ({ id: tr.dataset.vehicle, cells: [...tr.children].map((td) => td.textContent) })),
    notes: [...document.querySelectorAll('#notes li')].map((li) => li.textContent),
    dispatchers: [...document.querySelectorAll('#dispatchers li')].map((li) => li.textContent),
    mapPoints: document.querySelectorAll('#map circle').length
  }))
  if (args.screenshot) await page.screenshot({ path: args.screenshot })
  if (args.hold) await page.waitForTimeout(Number(args.hold))
  shown.errors = consoleErrors
  console.log(JSON.stringify(shown))
} finally {
  clearTimeout(deadline)
  await browser.close()
}
