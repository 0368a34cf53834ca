// The browsers the Node-driven browser tests run in, behind Playwright's page API:
//   chromium: playwright-core and Debian's /usr/bin/chromium (CHROMIUM overrides), as it is;
//   firefox:  puppeteer-core over WebDriver BiDi and Debian's /usr/bin/firefox-esr (FIREFOX
//             overrides; Playwright drives only its own patched Firefox), wrapped so that the subset
//             of Playwright's Browser / BrowserContext / Page the scenarios use works unchanged.
// Which one: launch(name), or the TEST_BROWSER environment variable (tests/support/browsers.py sets it
// per pytest parameter); chromium when unset.
//
// A Playwright script runs in Firefox too by replacing its launch line:
//   - const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', ... })
//   + const browser = await launch()    // import { launch } from '<repo>/webapp/test/browsers.mjs'
// and its pytest test by taking the `browser` parameter (tests/support/browsers.py: `@browsers.each`,
// and `env=browsers.env(browser)` for the node subprocess). Used by webapp/test/scenario.mjs and
// console.mjs. What the Firefox side offers (anything else is missing: a TypeError shows the gap at once):
//   browser.newPage / newContext({ viewport }) / close(); context.newPage() / setOffline(b) / close();
//   page.on('pageerror' | 'console' | 'dialog'), goto, reload, url, close, exposeFunction, evaluate,
//   waitForTimeout, waitForFunction(fn, arg, { timeout }), waitForSelector (visible, as Playwright's),
//   click, fill, press, focus, selectOption (value or label), textContent, getAttribute, inputValue,
//   isVisible, isHidden, isDisabled, $$eval, screenshot, setViewportSize, keyboard, mouse,
//   locator(css).boundingBox() / focus(), request.get / post (a fetch from the page: the context's
//   cookies go with it).
// CSS selectors only (no Playwright :has-text / text= engines); no context.route (serve files over HTTP).
// Firefox differs: a failed WebSocket connection is a 'pageerror' there (Chromium: a console error);
// a page focused from script shows no :focus-visible ring (Tab does); each page gets its own window
// (a tab behind another is hidden and gets no requestAnimationFrame, which the web app renders on).
// The client library's test (clients/js/test/browser/run.mjs) launches its own: it is another package
// (its own playwright-core / puppeteer-core versions; the library must not depend on the app that
// uses it), and its Chromium side cuts the network for real (context.setOffline, its files served by
// context.route, a flag for loopback access) where this wrapper's Firefox has neither.

export const BROWSERS = ['chromium', 'firefox']

export function browserName () {
  const name = process.env.TEST_BROWSER || 'chromium'
  if (!BROWSERS.includes(name)) throw new Error(`TEST_BROWSER must be one of ${BROWSERS.join(', ')}, not ${name}`)
  return name
}

export async function launch (name = browserName()) {
  if (name === 'firefox') return firefox()
  const { chromium } = await import('playwright-core')
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
}

const TIMEOUT = 30000

async function firefox () {
  const puppeteer = (await import('puppeteer-core')).default
  const browser = await puppeteer.launch({
    browser: 'firefox', executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr', headless: true
  })
  const wrapped = {
    puppeteer: browser,
    async newPage (options) { return (await wrapped.newContext(options)).newPage() }, // as Playwright: a page in a new context
    async newContext ({ viewport } = {}) {
      const context = await browser.createBrowserContext()
      const pages = []
      return {
        async newPage () {
          // its own window: a tab behind another is hidden, and a hidden page gets no animation frames
          const page = await context.newPage({ type: 'window' })
          if (viewport) await page.setViewport(viewport)
          pages.push(page)
          return wrapPage(page)
        },
        async setOffline (offline) { for (const page of pages) await page.setOfflineMode(offline) },
        close: () => context.close()
      }
    },
    close: () => browser.close()
  }
  return wrapped
}

function wrapPage (page) {
  const visible = (selector, timeout = TIMEOUT) => page.waitForSelector(selector, { visible: true, timeout })
  const attached = (selector) => page.waitForSelector(selector, { timeout: TIMEOUT })
  const on = (selector, fn, ...args) => attached(selector).then(() => page.$eval(selector, fn, ...args))
  const isVisible = (selector) => page.evaluate((s) => { // Playwright's rule: a non-empty box, not visibility:hidden
    const el = document.querySelector(s)
    if (!el) return false
    const box = el.getBoundingClientRect()
    return box.width > 0 && box.height > 0 && getComputedStyle(el).visibility !== 'hidden'
  }, selector)
  const request = async (method, url, { data, headers = {} } = {}) => {
    const target = new URL(url, page.url())
    if (new URL(page.url()).origin !== target.origin) await page.goto(`${target.origin}/`) // a fetch needs the origin's page
    const status = await page.evaluate(async ([method, url, data, headers]) => {
      if (data !== undefined) headers = { 'Content-Type': 'application/json', ...headers }
      const res = await fetch(url, { method, headers, body: data === undefined ? undefined : JSON.stringify(data) })
      return res.status
    }, [method, target.href, data, headers])
    return { status: () => status }
  }
  return {
    puppeteer: page,
    keyboard: page.keyboard,
    mouse: page.mouse,
    on (event, fn) { page.on(event, fn); return this },
    goto: (url) => page.goto(url),
    reload: () => page.reload(),
    url: () => page.url(),
    close: () => page.close(),
    exposeFunction: (name, fn) => page.exposeFunction(name, fn),
    waitForTimeout: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
    evaluate: (fn, arg) => page.evaluate(fn, arg),
    waitForFunction: (fn, arg, { timeout = TIMEOUT } = {}) => page.waitForFunction(fn, { timeout, polling: 50 }, arg),
    waitForSelector: (selector, { timeout } = {}) => visible(selector, timeout),
    click: (selector) => page.locator(selector).setTimeout(TIMEOUT).click(),
    fill: (selector, value) => page.locator(selector).setTimeout(TIMEOUT).fill(value),
    focus: (selector) => visible(selector).then(() => page.focus(selector)),
    press: (selector, key) => visible(selector).then(() => page.focus(selector)).then(() => page.keyboard.press(key)),
    selectOption: (selector, value) => page.waitForFunction((s, v) => { // by value or label, as Playwright
      const select = document.querySelector(s)
      const option = select && [...select.options].find((o) => o.value === v || o.label === v)
      if (!option) return false
      select.value = option.value
      select.dispatchEvent(new Event('input', { bubbles: true }))
      select.dispatchEvent(new Event('change', { bubbles: true }))
      return true
    }, { timeout: TIMEOUT, polling: 50 }, selector, value),
    textContent: (selector) => on(selector, (el) => el.textContent),
    getAttribute: (selector, name) => on(selector, (el, n) => el.getAttribute(n), name),
    inputValue: (selector) => on(selector, (el) => el.value),
    isDisabled: (selector) => on(selector, (el) => el.matches(':disabled')),
    isVisible,
    isHidden: async (selector) => !(await isVisible(selector)),
    $$eval: (selector, fn) => page.$$eval(selector, fn),
    screenshot: (options) => page.screenshot(options),
    setViewportSize: (size) => page.setViewport(size),
    locator: (selector) => ({
      boundingBox: () => visible(selector).then((el) => el.boundingBox()),
      focus: () => visible(selector).then(() => page.focus(selector))
    }),
    request: { get: (url, options) => request('GET', url, options), post: (url, options) => request('POST', url, options) }
  }
}
