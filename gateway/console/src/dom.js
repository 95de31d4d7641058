// Elements made from data, never from markup: every text goes in as a text node, so a name
// holding "<script>" is shown as those characters and never run.

/** An element `tag` with `attrs` (a `class`, `aria-*`, `on*` handlers...) and `children`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const LONG_CELL = 40;

/** A table with a caption, a header row and rows of cells; `num` columns align right. */
export function table(caption, columns, rows, { num = [] } = {}) {
  const isNum = (i) => num.includes(i);
  return h('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': caption },
    h('table', {},
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, columns.map((c, i) =>
        h('th', { scope: 'col', class: isNum(i) ? 'num' : null }, c)))),
      h('tbody', {}, rows.length === 0
        ? h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, 'Nothing yet.'))
        : rows.map((cells) => h('tr', {}, cells.map((cell, i) =>
          h(i === 0 ? 'th' : 'td', {
            scope: i === 0 ? 'row' : null,
            class: isNum(i) ? 'num' : null,
            // A long text is cut short on screen; all of it is in the title and to a reader.
            title: typeof cell === 'string' && cell.length > LONG_CELL ? cell : null,
          }, cell)))))));
}

/** Says `text` in the polite live region (and shows it briefly). */
export function say(text) {
  const status = document.getElementById('status');
  status.textContent = text;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { status.textContent = ''; }, 6000);
}

/** Replaces `main`'s content with a page titled `title`, and moves focus to it. */
export function page(title, ...children) {
  const main = document.getElementById('main');
  main.replaceChildren(h('h1', {}, title), ...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  document.title = `${title} · tollgate console`;
  main.focus({ preventScroll: true });
  return main;
}

/** An RFC 3339 instant as the reader's local date and time, or a dash. */
export function when(text) {
  if (!text) return '–';
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? text : date.toLocaleString();
}
