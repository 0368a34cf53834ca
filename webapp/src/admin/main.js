// The operator console (/admin/): sign-in with an HttpOnly session cookie (POST
// /api/v1/operator/session), then two sections: customers and infrastructure. What an operator may
// do is decided by the server (staff cannot delete: those routes answer 403); the page only mirrors
// it by disabling the buttons. A customer's dispatcher-app session or API key is not an operator:
// every route here answers 401 and the page shows the sign-in form.
import './console.css'
import { api } from './api.js'
import { customersView } from './customers.js'
import { $ } from './dom.js'
import { infrastructureView } from './infrastructure.js'

const state = { session: null, canDelete: false }
const customers = customersView(state)
const infrastructure = infrastructureView()
window.consoleApp = state // read by the browser tests

function showSignIn (message = '') {
  state.session = null
  api.csrf = null
  customers.stop()
  infrastructure.stop()
  $('console-main').hidden = true
  $('tabs').hidden = true
  $('sign-out').hidden = true
  $('who').textContent = ''
  $('signin-view').hidden = false
  $('signin-error').textContent = message
  document.body.dataset.state = 'signed-out'
  $('signin-email').focus()
}

async function showConsole (session) {
  state.session = session
  state.canDelete = session.can_delete
  api.csrf = session.csrf_token
  $('signin-view').hidden = true
  $('console-main').hidden = false
  $('tabs').hidden = false
  $('sign-out').hidden = false
  $('who').textContent = `${session.operator.email} · ${session.operator.role}`
  document.body.classList.toggle('staff', !session.can_delete)
  await customers.start()
  document.body.dataset.state = 'signed-in'
  route()
}

function route () {
  if (!state.session) return
  const tab = location.hash === '#infrastructure' ? 'infrastructure' : 'customers'
  $('tab-customers').hidden = tab !== 'customers'
  $('tab-infrastructure').hidden = tab !== 'infrastructure'
  for (const a of document.querySelectorAll('#tabs a')) {
    if (a.dataset.tab === tab) a.setAttribute('aria-current', 'page')
    else a.removeAttribute('aria-current')
  }
  if (tab === 'infrastructure') infrastructure.start()
  else infrastructure.stop()
}

api.onSignedOut = () => { if (state.session) showSignIn('Your session ended; sign in again.') }
window.addEventListener('hashchange', route)

$('signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault()
  $('signin-error').textContent = ''
  try {
    const session = await api.post('/api/v1/operator/session', {
      email: $('signin-email').value.trim(),
      password: $('signin-password').value
    })
    $('signin-password').value = ''
    await showConsole(session)
  } catch (e) {
    $('signin-error').textContent = e.status === 401 ? 'Email or password is wrong.' : e.message
  }
})

$('sign-out').addEventListener('click', async () => {
  try { await api.del('/api/v1/operator/session') } catch { /* signed out either way */ }
  showSignIn()
})

api.get('/api/v1/operator/session').then(showConsole, () => showSignIn())
