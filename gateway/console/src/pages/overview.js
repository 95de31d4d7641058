// Overview: this period's spend against limits by team, from the live budget table, the
// month's spend from the usage files (the rollup `tollgate report` makes), a burn-down, and
// the forecast's run-out date.
import { get, query } from '../api.js';
import { h, page, table, when } from '../dom.js';
import { fromNanos, money, plotted, share, toNanos } from '../money.js';
import { lines } from '../chart.js';
import { monthStart, seconds, tomorrow } from '../period.js';

/** Each team once, with its budget as the budget table has it now. */
export function teamsOf(allocations) {
  const teams = new Map();
  for (const a of allocations) {
    if (!teams.has(a.team)) teams.set(a.team, { name: a.team, budget: a.team_budget, allocations: 0 });
    teams.get(a.team).allocations += 1;
  }
  return [...teams.values()].sort((x, y) => x.name.localeCompare(y.name));
}

export async function overview() {
  const from = monthStart();
  const to = tomorrow();
  const [listing, report, series] = await Promise.all([
    get('/admin/v1/allocations'),
    get(`/admin/v1/report${query({ by: 'team', from })}`),
    get(`/admin/v1/series${query({ by: 'team', from, to, step: 'day' })}`),
  ]);
  const currency = listing.currency;
  const teams = teamsOf(listing.allocations);
  const monthly = new Map(report.rows.map((r) => [r.team, r]));
  const total = report.total;

  const cards = h('div', { class: 'cards' },
    h('section', { class: 'card', 'aria-labelledby': 'period-total-label' },
      h('h3', { id: 'period-total-label' }, 'Spent this month'),
      h('div', { class: 'figure', id: 'period-total', dataset: { nanos: total.cost_nanos } },
        money(total.cost, report.currency || currency)),
      h('div', { class: 'muted' }, `${total.events} events since ${when(from)}`)),
    h('section', { class: 'card' },
      h('h3', {}, 'Teams'),
      h('div', { class: 'figure' }, String(teams.length)),
      h('div', { class: 'muted' }, `${listing.allocations.length} allocations`)),
    h('section', { class: 'card' },
      h('h3', {}, 'In flight now'),
      h('div', { class: 'figure' }, money(fromNanos(teams.reduce((sum, t) => sum + toNanos(t.budget.in_flight), 0n)), currency)),
      h('div', { class: 'muted' }, 'held by calls not yet settled')));

  const rows = teams.map((t) => {
    const b = t.budget;
    const limit = b.limit === null ? null : toNanos(b.limit);
    const spent = toNanos(b.spent);
    const used = limit === null ? null : share(spent + toNanos(b.in_flight), limit);
    return [
      t.name,
      money(monthly.get(t.name)?.cost ?? '0.00', currency),
      money(b.spent, currency),
      money(b.in_flight, currency),
      b.limit === null ? 'no limit' : money(b.limit, currency),
      b.remaining === null ? '–' : money(b.remaining, currency),
      used === null ? '–' : h('meter', { min: 0, max: 1, low: 0.75, high: 0.9, optimum: 0.2, value: used,
        'aria-label': `${t.name}: ${Math.round(used * 100)} % of its limit used or held` }),
      b.period,
      when(b.resets_at),
      b.runs_out_at ? when(b.runs_out_at) : (limit === null ? '–' : 'not at this pace'),
    ];
  });

  const chart = h('div', { class: 'chart' });
  page('Overview', cards,
    h('h2', {}, 'Teams this period'),
    table('Spend against limits by team: the month from the usage files, the period from the live budget table',
      ['Team', 'This month', 'Spent (period)', 'In flight', 'Limit', 'Remaining', 'Used', 'Period', 'Resets', 'Runs out'],
      rows, { num: [1, 2, 3, 4, 5] }),
    h('h2', {}, 'Burn-down this month'),
    h('p', { class: 'muted' }, 'For a team with a monthly limit, what remains of it at the end of each day; for any other, what it has spent.'),
    chart);
  burnDown(chart, series, teams, currency);
}

function burnDown(target, series, teams, currency) {
  const budgets = new Map(teams.map((t) => [t.name, t.budget]));
  // Each point is what remains (or was spent) at the end of its day.
  const xs = series.starts.map((start) => seconds(start) + series.step_ms / 1000);
  const drawn = series.groups.map((g) => {
    const budget = budgets.get(g.key);
    const monthly = budget && budget.limit !== null && budget.period === 'month';
    let running = monthly ? toNanos(budget.limit) : 0n;
    const values = g.cost.map((c) => {
      running = monthly ? running - toNanos(c) : running + toNanos(c);
      return plotted(running);
    });
    return { label: `${g.key ?? '(none)'}${monthly ? ' remaining' : ' spent'}`, values };
  });
  lines(target, {
    xs,
    series: drawn,
    yLabel: currency,
    label: `Burn-down this month by team, in ${currency}: ${drawn.map((d) => `${d.label} ${d.values.at(-1)}`).join('; ')}`,
  });
}
