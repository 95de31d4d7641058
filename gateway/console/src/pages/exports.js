// Exports: the chargeback CSV and the FOCUS statement (CSV and Parquet) for a window, made
// by the gateway from the usage files and downloaded with the session's cookie.
import { query } from '../api.js';
import { h, page } from '../dom.js';
import { monthStart } from '../period.js';

const DIMENSIONS = ['team', 'project', 'allocation', 'cost_center', 'user', 'agent', 'model', 'provider'];

export function exports() {
  const day = (text) => text.slice(0, 10);
  const from = h('input', { type: 'date', name: 'from', value: day(monthStart()), required: true });
  const to = h('input', { type: 'date', name: 'to' });
  const by = h('select', { name: 'by' }, DIMENSIONS.map((d) => h('option', { value: d }, d)));
  const links = h('ul', { id: 'export-links' });
  const update = () => {
    const window = { from: from.value ? `${from.value}T00:00:00Z` : undefined, to: to.value ? `${to.value}T00:00:00Z` : undefined };
    links.replaceChildren(
      h('li', {}, h('a', { href: `/admin/v1/exports/chargeback.csv${query({ ...window, by: by.value })}`, download: 'tollgate-chargeback.csv' }, `Chargeback by ${by.value} (CSV)`)),
      h('li', {}, h('a', { href: `/admin/v1/exports/focus.csv${query(window)}`, download: 'tollgate-focus.csv' }, 'FOCUS statement (CSV)')),
      h('li', {}, h('a', { href: `/admin/v1/exports/focus.parquet${query(window)}`, download: 'tollgate-focus.parquet' }, 'FOCUS statement (Parquet)')));
  };
  for (const input of [from, to, by]) input.addEventListener('change', update);
  update();
  page('Exports',
    h('p', { class: 'muted' }, 'From the start of the first day to the start of the last (UTC); leave the end empty for up to now.'),
    h('form', { class: 'inline', onsubmit: (e) => e.preventDefault() },
      h('label', {}, 'From', from), h('label', {}, 'To (not included)', to), h('label', {}, 'Chargeback by', by)),
    links);
}
