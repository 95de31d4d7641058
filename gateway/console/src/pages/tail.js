// Live tail: this replica's latest usage events as they are written to its log.
import { get, query } from '../api.js';
import { h, page, table } from '../dom.js';
import { fromNanos } from '../money.js';

const SHOWN_MAX = 200;
const POLL_MS = 2000;

let timer = null;

/** Stops polling (when another page is shown). */
export function stopTail() {
  clearTimeout(timer);
  timer = null;
}

export async function tail() {
  stopTail();
  const shown = [];
  let next = null;
  let paused = false;
  const holder = h('div', { id: 'tail' });
  const pause = h('button', { type: 'button', 'aria-pressed': 'false', onclick: () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    pause.textContent = paused ? 'Resume' : 'Pause';
  } }, 'Pause');
  const row = (e) => [
    new Date(e.ts_ms).toLocaleTimeString(),
    e.allocation ?? '–',
    e.user ?? '–',
    e.agent ?? '–',
    e.model ? `${e.provider}/${e.model}` : (e.unit ?? e.kind),
    e.status,
    String(e.tokens_in),
    String(e.tokens_out),
    `${fromNanos(BigInt(e.cost_nanos))} ${e.currency}`,
  ];
  const render = () => holder.replaceChildren(table(`The latest ${shown.length} usage events, newest first`,
    ['Time', 'Allocation', 'User', 'Agent', 'Model', 'Status', 'Tokens in', 'Tokens out', 'Cost'],
    shown.map(row), { num: [6, 7, 8] }));
  const poll = async () => {
    if (!paused) {
      const answer = await get(`/admin/v1/events/recent${query({ after: next })}`);
      next = answer.next;
      shown.unshift(...answer.events.reverse());
      shown.length = Math.min(shown.length, SHOWN_MAX);
      render();
    }
    if (document.getElementById('tail') === holder) timer = setTimeout(() => poll().catch(() => {}), POLL_MS);
  };
  page('Live tail', h('p', { class: 'muted' }, `Refreshed every ${POLL_MS / 1000} s from this replica's event log. `, pause), holder);
  await poll();
}
