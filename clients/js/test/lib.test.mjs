// Unit tests of @webhost/sync-client's pure parts and stores (the sync itself is tested against a
// real server from tests/test_sync_client_js.py and tests/test_sync_client_browser.py).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, appendFile, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as encoding from 'lib0/encoding'
import {
  Y, backoffDelay, tokenExpiry, validateFix, InvalidFixError, utcDay, trackDoc, timeOf, memoryStorage, readFeedback
} from '@webhost/sync-client'
import { fileStorage } from '@webhost/sync-client/node'
import { readFrame, refreshFrame, WEBHOST } from '../src/wire.js'
import { renewalDelay } from '../src/tokens.js'

test('backoff: full jitter below an exponential cap', () => {
  const opts = { baseMs: 100, maxMs: 5000 }
  assert.equal(backoffDelay(0, { ...opts, random: () => 0.999999 }), 99)
  assert.equal(backoffDelay(3, { ...opts, random: () => 0.5 }), 400)
  assert.equal(backoffDelay(50, { ...opts, random: () => 0.999999 }), 4999)
  assert.equal(backoffDelay(4, { ...opts, random: () => 0 }), 0)
  const seen = new Set(Array.from({ length: 50 }, () => backoffDelay(6, opts)))
  assert.ok(seen.size > 10, 'delays are spread, not one value')
  for (const d of seen) assert.ok(d >= 0 && d < 5000)
})

test('tokens: expiry read from a wst1 token; renewal a quarter before (2 s to a minute, not before half-way)', () => {
  const claims = Buffer.from(JSON.stringify({ c: 'x', exp: 1700000000 })).toString('base64url')
  assert.equal(tokenExpiry(`wst1.${claims}.sig`), 1700000000 * 1000)
  assert.equal(tokenExpiry('opaque'), null)
  assert.equal(tokenExpiry('wst1.!!!.sig'), null)
  assert.equal(renewalDelay(0, 3600000), 3540000) // a minute before
  assert.equal(renewalDelay(0, 40000), 30000) // a quarter before
  assert.equal(renewalDelay(0, 6000), 4000) // at least 2 s before
  assert.equal(renewalDelay(0, 3000), 1500) // never before half-way
  assert.equal(renewalDelay(5000, 1000), 0)
})

test('fixes: the documented format is checked before storing', () => {
  assert.deepEqual(validateFix({ t: 1000, lat: 1, lng: 2, speed: 3, extra: 'dropped' }), { t: 1000, lat: 1, lng: 2, speed: 3 })
  assert.deepEqual(validateFix({ lat: 1, lng: 2 }, 1234.9), { t: 1234, lat: 1, lng: 2 })
  assert.equal(validateFix({ t: '2025-01-31T08:00:00', lat: 1, lng: 2 }).t, Date.UTC(2025, 0, 31, 8))
  assert.equal(validateFix({ t: '2025-01-31T08:00:00+01:00', lat: 1, lng: 2 }).t, Date.UTC(2025, 0, 31, 7))
  const reason = (fix) => { try { validateFix(fix); return null } catch (e) { assert.ok(e instanceof InvalidFixError); return e.reason } }
  assert.equal(reason({ t: 1, lat: '52', lng: 13 }), 'malformed')
  assert.equal(reason({ t: 1, lat: NaN, lng: 13 }), 'malformed')
  assert.equal(reason({ t: 'yesterday', lat: 52, lng: 13 }), 'malformed')
  assert.equal(reason({ t: 1, lat: 52, lng: 13, speed: Infinity }), 'malformed')
  assert.equal(reason({ t: 1, lat: 91, lng: 13 }), 'out_of_range')
  assert.equal(reason({ t: 1, lat: 52, lng: -180.5 }), 'out_of_range')
  assert.equal(reason({ t: 1, lat: 0, lng: 0 }), 'null_island')
  assert.equal(reason(null), 'malformed')
  assert.equal(timeOf('x'.repeat(100)), null)
})

test('days: the UTC day of a fix names its track document', () => {
  const midnight = Date.UTC(2025, 0, 31)
  assert.equal(utcDay(midnight - 1), '2025-01-30')
  assert.equal(utcDay(midnight), '2025-01-31')
  assert.equal(trackDoc('v1', '2025-01-31'), 'tracks/v1/2025-01-31')
})

test('feedback: version 1 of the server state only', () => {
  const state = { webhost: 'materialization', v: 1, doc: 'tracks/v/d', materialized: 5, stored: 3, rejected: { duplicate: 2, bad: 'x' }, quota: { day: 'd', limit: 3, used: 3, reached: true }, updated_at: 9 }
  assert.deepEqual(readFeedback(state, 'd'), { doc: 'tracks/v/d', day: 'd', materialized: 5, stored: 3, rejected: { duplicate: 2 }, quota: { day: 'd', limit: 3, used: 3, reached: true }, updatedAt: 9 })
  assert.equal(readFeedback({ ...state, v: 2 }, 'd'), null)
  assert.equal(readFeedback({ user: 'someone' }, 'd'), null)
})

test('wire: type-87 frames', () => {
  const doc = new Y.Doc()
  const frame = (kind, write) => { const e = encoding.createEncoder(); encoding.writeVarUint(e, WEBHOST); encoding.writeVarUint(e, 1); encoding.writeVarUint(e, kind); write(e); return encoding.toUint8Array(e) }
  assert.deepEqual(readFrame(frame(3, (e) => encoding.writeVarUint(e, 41)), doc, null), { type: 'durable', count: 41 })
  assert.deepEqual(readFrame(frame(1, (e) => encoding.writeVarUint(e, 1700000000)), doc, null), { type: 'refreshed', expiresAt: 1700000000 })
  assert.deepEqual(readFrame(frame(2, (e) => encoding.writeVarString(e, 'no')), doc, null), { type: 'refresh-refused', reason: 'no' })
  assert.deepEqual(readFrame(frame(9, () => {}), doc, null), { type: 'ignored' })
  assert.deepEqual(readFrame(new Uint8Array([87, 2, 3, 1]), doc, null), { type: 'ignored' }) // another version
  assert.deepEqual([...refreshFrame('ab')], [87, 1, 0, 2, 97, 98])
})

async function keep (storage, name, edit) {
  const doc = new Y.Doc()
  const binding = await storage.bind(name, doc)
  edit(doc, binding)
  await binding.destroy()
  return binding.meta
}

async function load (storage, name) {
  const doc = new Y.Doc()
  const binding = await storage.bind(name, doc)
  await binding.destroy()
  return { doc, meta: binding.meta }
}

test('file store: a document and its meta record survive a restart; a torn last frame is ignored', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'wsc-'))
  const name = 'acme/tracks/v1/2025-01-31'
  await keep(fileStorage(dir), name, (doc, binding) => {
    for (let i = 0; i < 10; i++) doc.getArray('points').push([{ t: i, lat: 1, lng: 2 }])
    binding.setMeta({ pending: 10 })
  })
  const files = await readdir(dir)
  assert.equal(files.length, 2)
  const log = files.find((f) => f.startsWith('log.'))
  await appendFile(join(dir, log), Buffer.from([200, 1, 7])) // a crash in the middle of an append
  const again = await load(fileStorage(dir), name)
  assert.equal(again.doc.getArray('points').length, 10)
  assert.deepEqual(again.meta, { pending: 10 })
  assert.deepEqual(await fileStorage(dir).list(), [{ name, meta: { pending: 10 } }])
  await fileStorage(dir).remove(name)
  assert.deepEqual(await readdir(dir), [])
})

test('file store: the log is compacted into one update', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'wsc-'))
  const storage = fileStorage(dir, { flushMs: 1, compactAfter: 20 })
  const doc = new Y.Doc()
  const binding = await storage.bind('d', doc)
  for (let i = 0; i < 100; i++) {
    doc.getMap('m').set(`k${i}`, i)
    await new Promise((resolve) => setTimeout(resolve, 3))
  }
  await binding.destroy()
  const bytes = await readFile(join(dir, 'log.d'))
  const { doc: reloaded } = await load(fileStorage(dir), 'd')
  assert.equal(reloaded.getMap('m').size, 100)
  assert.ok(bytes.length < 100 * 30, `compacted (${bytes.length} bytes)`)
})

test('memory store: edits made while the store loads are kept', async () => {
  const storage = memoryStorage()
  const doc = new Y.Doc()
  const bound = storage.bind('d', doc)
  doc.getArray('a').push([1])
  await (await bound).destroy()
  const { doc: reloaded } = await load(storage, 'd')
  assert.deepEqual(reloaded.getArray('a').toArray(), [1])
})

// a build-time check: the bundler (Vite 8) itself needs Node 20.19+, the library does not
const bundlerRuns = Number(process.versions.node.split('.')[0]) >= 20
test('tree-shakable: an app importing only validateFix bundles no yjs, y-protocols or sockets', { skip: !bundlerRuns && 'Vite needs Node 20' }, async () => {
  const { build } = await import('vite')
  const outDir = await mkdtemp(join(tmpdir(), 'wsc-shake-'))
  const entry = new URL('./shake/entry.js', import.meta.url).pathname
  await build({
    logLevel: 'silent',
    configFile: false,
    build: { outDir, minify: false, lib: { entry, formats: ['es'], fileName: 'out' } }
  })
  const code = await readFile(join(outDir, 'out.js'), 'utf8')
  assert.match(code, /null_island/)
  assert.doesNotMatch(code, /class Doc|Yjs was already imported|WebSocket|indexedDB/)
  assert.ok(code.length < 5000, `${code.length} bytes`)
})
