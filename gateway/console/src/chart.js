// Charts with uPlot, bundled from npm. A chart is drawn on a canvas, so each one carries a
// label saying what it shows for screen readers; the figures are in the tables beside it.
import uPlot from 'uplot';

const COLOURS = ['#0a5bd3', '#d4522a', '#1a7f37', '#8250df', '#bf8700', '#0e8a8a', '#cf222e', '#57606a'];

/** A line chart in `target` of `series` ({label, values}) over `xs` (Unix seconds). */
export function lines(target, { xs, series, label, yLabel, dashed = [] }) {
  target.replaceChildren();
  target.setAttribute('role', 'img');
  target.setAttribute('aria-label', label);
  if (xs.length === 0 || series.length === 0) {
    target.textContent = 'No spend in this window yet.';
    return null;
  }
  const width = () => Math.max(280, target.clientWidth - 16);
  const options = {
    width: width(),
    height: 260,
    scales: { x: { time: true } },
    axes: [{}, { label: yLabel, size: 70 }],
    legend: { live: false },
    series: [{}, ...series.map((s, i) => ({
      label: s.label,
      stroke: COLOURS[i % COLOURS.length],
      width: 2,
      dash: dashed.includes(i) ? [6, 4] : undefined,
      points: { show: xs.length < 40 },
    }))],
  };
  const plot = new uPlot(options, [xs, ...series.map((s) => s.values)], target);
  const resize = new ResizeObserver(() => plot.setSize({ width: width(), height: 260 }));
  resize.observe(target);
  return plot;
}
