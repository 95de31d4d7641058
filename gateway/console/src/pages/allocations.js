// Allocations: each one's budget at its three levels, and one allocation's spend over time by
// model, user or agent, its holds in flight, what remains and when it resets.
import { get, query } from '../api.js';
import { h, page, table, when } from '../dom.js';
import { money } from '../money.js';
import { lines } from '../chart.js';
import { hoursBefore, monthStart, nextHour, seconds, tomorrow } from '../period.js';
import { plotted, toNanos } from '../money.js';

export async function allocations() {
  const listing = await get('/admin/v1/allocations');
  const c = listing.currency;
  const rows = listing.allocations.map((a) => [
    h('a', { href: `#/allocation/${encodeURIComponent(a.name)}` }, a.name),
    a.team,
    a.project,
    money(a.budget.spent, c),
    money(a.budget.in_flight, c),
    a.budget.limit === null ? 'no limit' : money(a.budget.limit, c),
    a.budget.remaining === null ? '–' : money(a.budget.remaining, c),
    when(a.budget.resets_at),
  ]);
  page('Allocations',
    table('Every allocation, from the live budget table', ['Allocation', 'Team', 'Project', 'Spent', 'In flight', 'Limit', 'Remaining', 'Resets'],
      rows, { num: [3, 4, 5, 6] }));
}

const LEVELS = [['budget', 'Allocation'], ['project_budget', 'Project'], ['team_budget', 'Team']];

export async function allocation(name) {
  const listing = await get('/admin/v1/allocations');
  const a = listing.allocations.find((x) => x.name === name);
  if (!a) {
    page('Allocation', h('p', { class: 'bad' }, `No allocation is named “${name}”.`));
    return;
  }
  const c = listing.currency;
  const cards = h('div', { class: 'cards' }, LEVELS.map(([field, level]) => {
    const b = a[field];
    return h('section', { class: 'card' },
      h('h3', {}, `${level}${field === 'budget' ? '' : `: ${field === 'team_budget' ? a.team : a.project}`}`),
      h('div', { class: 'figure' }, b.remaining === null ? money(b.spent, c) : money(b.remaining, c)),
      h('div', { class: 'muted' }, b.remaining === null ? `spent this ${b.period}, no limit` : `remaining of ${money(b.limit, c)} this ${b.period}`),
      h('div', {}, `Spent ${money(b.spent, c)} · in flight ${money(b.in_flight, c)}`),
      h('div', { class: 'muted' }, `Resets ${when(b.resets_at)}${b.runs_out_at ? ` · runs out ${when(b.runs_out_at)}` : ''}`));
  }));
  const by = h('select', { id: 'series-by' }, ['model', 'user', 'agent'].map((d) => h('option', { value: d }, d)));
  const span = h('select', { id: 'series-span' },
    h('option', { value: 'month' }, 'this month, by day'),
    h('option', { value: 'day' }, 'the last 48 hours, by hour'));
  const chart = h('div', { class: 'chart' });
  const totals = h('div');
  const draw = async () => {
    const monthly = span.value === 'month';
    const to = monthly ? tomorrow() : nextHour();
    const from = monthly ? monthStart() : hoursBefore(to, 48);
    const series = await get(`/admin/v1/series${query({ by: by.value, allocation: name, from, to, step: monthly ? 'day' : 'hour' })}`);
    const drawn = series.groups.map((g) => ({ label: g.key ?? '(none)', values: g.cost.map((x) => plotted(toNanos(x))) }));
    lines(chart, {
      xs: series.starts.map(seconds),
      series: drawn,
      yLabel: c,
      label: `Spend of ${name} by ${by.value}, ${span.selectedOptions[0].text}`,
    });
    totals.replaceChildren(table(`Spend of ${name} by ${by.value}, ${span.selectedOptions[0].text}`,
      [by.value, 'Spent'], series.groups.map((g) => [g.key ?? '(none)', money(g.total, c)]), { num: [1] }));
  };
  by.addEventListener('change', draw);
  span.addEventListener('change', draw);
  page(`Allocation ${a.name}`,
    h('p', { class: 'muted' }, `Team ${a.team} · project ${a.project} · cost center ${a.cost_center}`),
    cards,
    h('h2', {}, 'Spend over time'),
    h('form', { class: 'inline', onsubmit: (e) => e.preventDefault() },
      h('label', {}, 'Group by', by), h('label', {}, 'Window', span)),
    chart, totals);
  await draw();
}
