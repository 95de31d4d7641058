// Amounts arrive as exact decimal strings ("12.50", "0.000000001") and are added as BigInt
// nano-units: the console never sums money in floating point. Only a chart's y values are
// numbers, and they are drawn, never shown as figures.

const NANOS = 1_000_000_000n;

/** A decimal string as BigInt nano-units. */
export function toNanos(text) {
  if (text === null || text === undefined || text === '') return 0n;
  const negative = text.startsWith('-');
  const [whole, fraction = ''] = (negative ? text.slice(1) : text).split('.');
  const nanos = BigInt(whole || '0') * NANOS + BigInt((fraction + '000000000').slice(0, 9));
  return negative ? -nanos : nanos;
}

/** BigInt nano-units as a decimal string with at least two places, as the gateway writes. */
export function fromNanos(nanos) {
  const negative = nanos < 0n;
  const magnitude = negative ? -nanos : nanos;
  let fraction = (magnitude % NANOS).toString().padStart(9, '0').replace(/0+$/, '');
  if (fraction.length < 2) fraction = fraction.padEnd(2, '0');
  return `${negative ? '-' : ''}${magnitude / NANOS}.${fraction}`;
}

/** A decimal string with its currency, or a dash for none. */
export function money(text, currency = '') {
  if (text === null || text === undefined) return '–';
  return currency ? `${text} ${currency}` : text;
}

/** A decimal string as a number, for a chart only. */
export function plotted(nanos) {
  return Number(nanos) / 1e9;
}

/** The share `part` is of `whole` (BigInt nanos), 0 to 1, for a meter. */
export function share(part, whole) {
  if (whole <= 0n) return 0;
  const ppm = (part * 1_000_000n) / whole;
  return Math.min(1, Math.max(0, Number(ppm) / 1e6));
}
