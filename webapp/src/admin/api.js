// The console's one way to the server: same-origin fetch with the operator's HttpOnly session
// cookie (the script never sees it) and the session's CSRF token on every state-changing request.
export class ApiError extends Error {
  constructor (status, body) {
    const error = (body && body.error) || {}
    super(error.message || `HTTP ${status}`)
    this.status = status
    this.code = error.code || 'http_' + status
    this.details = error.details || {}
  }
}

export const api = {
  csrf: null,
  onSignedOut: () => {},
  async call (method, path, body) {
    const headers = { Accept: 'application/json' }
    if (body !== undefined) headers['Content-Type'] = 'application/json'
    if (method !== 'GET' && this.csrf) headers['X-CSRF-Token'] = this.csrf
    const res = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    const text = await res.text()
    let data = null
    try { data = text ? JSON.parse(text) : null } catch { data = null }
    if (res.status === 401 && !path.endsWith('/operator/session')) this.onSignedOut()
    if (!res.ok) throw new ApiError(res.status, data)
    return data
  },
  get (path) { return this.call('GET', path) },
  post (path, body) { return this.call('POST', path, body === undefined ? {} : body) },
  del (path) { return this.call('DELETE', path) }
}

export const query = (params) => {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v)
  const s = q.toString()
  return s ? '?' + s : ''
}
