// Small DOM helpers: elements are built with textContent only (server data is never parsed as HTML).
export const $ = (id) => document.getElementById(id)

export function h (tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue
    if (k === 'class') el.className = v
    else if (k === 'text') el.textContent = v
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else el.setAttribute(k, v === true ? '' : v)
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c)
  return el
}

export function fill (parent, children, empty) {
  parent.replaceChildren(...children)
  if (!children.length && empty) parent.append(h(parent.tagName === 'TBODY' ? 'tr' : 'li', { class: 'empty' },
    parent.tagName === 'TBODY' ? h('td', { colspan: 9, text: empty }) : empty))
}

export const when = (iso) => {
  if (!iso) return '—'
  const d = typeof iso === 'number' ? new Date(iso * 1000) : new Date(iso)
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' })
}

export const ago = (seconds) => {
  if (seconds === null || seconds === undefined) return '—'
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds))
  return s < 90 ? `${s} s ago` : `${Math.round(s / 60)} min ago`
}

export const number = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'))

export function bytes (n) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`
}

// A labelled bar: used / limit as role=meter (screen readers read "vehicles 3 of 5").
export function bar (label, used, limit) {
  const pct = limit > 0 ? Math.min(100, (used / limit) * 100) : 0
  const level = pct >= 100 ? 'full' : pct >= 80 ? 'high' : 'ok'
  const id = 'bar-' + label.replace(/\W+/g, '-').toLowerCase()
  return h('div', { class: 'usage-row', 'data-resource': label },
    h('span', { class: 'usage-label', id, text: label }),
    h('div', {
      class: `bar ${level}`,
      role: 'meter',
      'aria-labelledby': id,
      'aria-valuemin': 0,
      'aria-valuemax': limit,
      'aria-valuenow': used,
      'aria-valuetext': `${number(used)} of ${number(limit)}`
    }, h('span', { style: `width: ${pct.toFixed(1)}%` })),
    h('span', { class: 'usage-value', text: `${number(used)} / ${number(limit)}` })
  )
}
