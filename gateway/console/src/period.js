// Windows in UTC, as budgets and the usage files count them.

/** The start of this UTC month, as RFC 3339. */
export function monthStart(now = new Date()) {
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString().replace('.000Z', 'Z');
}

/** The start of the next UTC day after `now`, as RFC 3339 (a series' end that holds today). */
export function tomorrow(now = new Date()) {
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1)).toISOString().replace('.000Z', 'Z');
}

/** The start of the next UTC hour after `now`. */
export function nextHour(now = new Date()) {
  const t = new Date(now.getTime());
  t.setUTCMinutes(0, 0, 0);
  return new Date(t.getTime() + 3_600_000).toISOString().replace('.000Z', 'Z');
}

/** `hours` before `end` (RFC 3339). */
export function hoursBefore(end, hours) {
  return new Date(new Date(end).getTime() - hours * 3_600_000).toISOString().replace('.000Z', 'Z');
}

/** An RFC 3339 instant as Unix seconds. */
export const seconds = (text) => Math.floor(new Date(text).getTime() / 1000);
