// Keys: every virtual key, and for those the session may manage, create (the secret shown
// once, here), revoke and rotate.
import { current, get, mayManage, post } from '../api.js';
import { h, page, say, table, when } from '../dom.js';

/** The keys page; `fresh` (`{answer, verb}`) is a key just made, its secret shown once. */
export async function keys(fresh = null) {
  const [listing, allocations] = await Promise.all([get('/admin/v1/keys'), get('/admin/v1/allocations')]);
  const manageable = allocations.allocations.filter((a) => mayManage(a.team));
  const reveal = h('div', { id: 'new-secret' });
  const render = (list) => list.map((k) => [
    h('code', {}, k.id),
    k.user,
    k.agent ?? '–',
    k.allocation,
    k.team,
    when(k.created_at),
    when(k.expires_at),
    k.revoked ? h('span', { class: 'bad' }, 'revoked') : h('span', { class: 'good' }, 'active'),
    k.revoked || !mayManage(k.team) ? '' : h('span', {},
      h('button', { type: 'button', class: 'danger', 'aria-label': `Revoke key ${k.id}`, onclick: () => revoke(k) }, 'Revoke'),
      ' ',
      h('button', { type: 'button', 'aria-label': `Rotate key ${k.id}`, onclick: () => rotate(k) }, 'Rotate')),
  ]);
  const showSecret = (answer, verb) => {
    reveal.replaceChildren(h('div', { class: 'secret', role: 'alert' },
      h('p', {}, h('strong', {}, `Key ${answer.id} ${verb}. `), 'Copy its secret now: it is not shown again.'),
      h('p', {}, h('code', { id: 'secret-value' }, answer.key)),
      h('button', { type: 'button', onclick: async () => {
        try { await navigator.clipboard.writeText(answer.key); say('Copied.'); } catch { say('Select the secret and copy it.'); }
      } }, 'Copy')));
  };
  const revoke = async (k) => {
    if (!window.confirm(`Revoke key ${k.id} of ${k.user}? Calls with it are refused at once.`)) return;
    try {
      await post(`/admin/v1/keys/${encodeURIComponent(k.id)}/revoke`);
      say(`Key ${k.id} revoked.`);
      await keys();
    } catch (e) { say(`Not revoked: ${e.message}`); }
  };
  const rotate = async (k) => {
    try {
      const answer = await post(`/admin/v1/keys/${encodeURIComponent(k.id)}/rotate`);
      await keys({ answer, verb: `replaces ${k.id}` });
    } catch (e) { say(`Not rotated: ${e.message}`); }
  };
  let form = null;
  if (manageable.length > 0) {
    const allocation = h('select', { name: 'allocation', required: true },
      manageable.map((a) => h('option', { value: a.name }, `${a.name} (${a.team})`)));
    const user = h('input', { name: 'user', required: true, autocomplete: 'off', placeholder: 'ada@example.com' });
    const agent = h('input', { name: 'agent', autocomplete: 'off', placeholder: 'optional' });
    const expires = h('select', { name: 'expires_in' },
      h('option', { value: '' }, 'never'), h('option', { value: '1d' }, 'in a day'),
      h('option', { value: '30d' }, 'in 30 days'), h('option', { value: '90d' }, 'in 90 days'));
    form = h('form', { class: 'inline', 'aria-label': 'Create a key', onsubmit: async (e) => {
      e.preventDefault();
      const body = { allocation: allocation.value, user: user.value.trim() };
      if (agent.value.trim()) body.agent = agent.value.trim();
      if (expires.value) body.expires_in = expires.value;
      try {
        const answer = await post('/admin/v1/keys', body);
        await keys({ answer, verb: 'created' });
      } catch (err) { say(`Not created: ${err.message}`); }
    } },
    h('label', {}, 'Allocation', allocation),
    h('label', {}, 'User', user),
    h('label', {}, 'Agent', agent),
    h('label', {}, 'Expires', expires),
    h('button', { type: 'submit', class: 'primary' }, 'Create key'));
  }
  page('Keys',
    form ? [h('h2', {}, 'Create a key'), form] : h('p', { class: 'muted' }, `Signed in as ${current().role}: keys can be read here, not changed.`),
    reveal,
    h('h2', {}, 'Every key'),
    table('Virtual keys: their ids, never their secrets', ['Id', 'User', 'Agent', 'Allocation', 'Team', 'Created', 'Expires', 'State', 'Actions'],
      render(listing.keys)));
  if (fresh) {
    showSecret(fresh.answer, fresh.verb);
    reveal.scrollIntoView();
  }
}
