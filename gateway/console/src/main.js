// The console's entry: sign-in, the page router (the part after `#`), and the header.
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { current, resume, signIn, signOut } from './api.js';
import { h, page, say } from './dom.js';
import { overview } from './pages/overview.js';
import { allocation, allocations } from './pages/allocations.js';
import { keys } from './pages/keys.js';
import { stopTail, tail } from './pages/tail.js';
import { rates } from './pages/rates.js';
import { exports } from './pages/exports.js';

const ROUTES = {
  overview,
  allocations,
  keys,
  tail,
  'rate-card': rates,
  exports,
};

function header() {
  const session = current();
  document.getElementById('nav').hidden = !session;
  document.getElementById('who').hidden = !session;
  if (session) {
    document.getElementById('who-name').textContent =
      `${session.name} · ${session.role}${session.team ? ` of ${session.team}` : ''}`;
  }
}

function signInPage(message) {
  header();
  const secret = h('input', { type: 'password', id: 'secret', name: 'secret', required: true, autocomplete: 'current-password' });
  const problem = h('p', { id: 'sign-in-problem', class: 'bad', role: 'alert' }, message || '');
  const form = h('form', { 'aria-describedby': 'sign-in-problem', onsubmit: async (e) => {
    e.preventDefault();
    try {
      await signIn(secret.value);
      secret.value = '';
      await route();
    } catch (err) {
      problem.textContent = err.status === 401 ? 'That token or secret is not valid.' : err.message;
      secret.focus();
    }
  } },
  h('label', { for: 'secret' }, 'Admin token or operator secret'),
  secret,
  h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  page('Sign in', h('div', { class: 'signin' }, form, problem));
  secret.focus();
}

async function route() {
  stopTail();
  if (!current()) {
    signInPage();
    return;
  }
  header();
  const hash = location.hash.replace(/^#\/?/, '');
  const [name, ...rest] = hash.split('/');
  for (const link of document.querySelectorAll('nav a')) {
    const target = link.getAttribute('href').slice(2);
    if (target === (name === 'allocation' ? 'allocations' : name || 'overview')) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  try {
    if (name === 'allocation' && rest.length) await allocation(decodeURIComponent(rest.join('/')));
    else await (ROUTES[name] || overview)();
  } catch (err) {
    if (err.status === 401) {
      signInPage('Your session has ended: sign in again.');
      return;
    }
    page('Something went wrong', h('p', { class: 'bad', role: 'alert' },
      err.status === 403 ? `Not allowed: ${err.message}` : err.message));
  }
}

document.getElementById('sign-out').addEventListener('click', async () => {
  try { await signOut(); } catch (e) { say(e.message); }
  location.hash = '';
  signInPage('Signed out.');
});
window.addEventListener('hashchange', () => { route(); });

resume().then(route, (err) => signInPage(err.message));
