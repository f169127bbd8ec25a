// Charts of a result's series (result.series, built by the server from the facts): each
// incident's key metric around its window against its baseline and limit, and each trend's
// metric since it began, its fitted line carried on to the warning and critical limits.

import uPlot from 'uplot';
import { format, METRICS } from './i18n.js';

const COLORS = {
  value: '#1f5fbf',
  baseline: '#2e7d32',
  threshold: '#b26a00',
  critical: '#c62828',
  projection: '#6a1b9a',
  window: 'rgba(198, 40, 40, 0.10)',
};
const MAX_PROJECTION_HOURS = 48;

function timestamps(series, count) {
  const start = Date.parse(series.start) / 1000;
  const step = series.intervalMinutes * 60;
  return Array.from({ length: count }, (_, i) => start + i * step);
}

/** The trend's line from the last sample to where it crosses the critical limit (capped). */
function projection(series) {
  const values = series.values;
  const last = values[values.length - 1];
  const slope = series.slopePerHour || 0;
  const limit = series.critical ?? series.threshold;
  if (last == null || slope <= 0 || limit == null) return [];
  const hours = Math.min(MAX_PROJECTION_HOURS, Math.max(0, (limit - last) / slope));
  const perStep = series.intervalMinutes / 60;
  const steps = Math.ceil(hours / perStep);
  return Array.from({ length: steps }, (_, i) => last + slope * perStep * (i + 1));
}

function highlightPlugin(series) {
  if (!series.highlightStart) return { hooks: {} };
  const from = Date.parse(series.highlightStart) / 1000;
  const to = Date.parse(series.highlightEnd || series.highlightStart) / 1000;
  return {
    hooks: {
      drawClear: [
        (u) => {
          const left = u.valToPos(from, 'x', true);
          const right = u.valToPos(to, 'x', true);
          u.ctx.save();
          u.ctx.fillStyle = COLORS.window;
          u.ctx.fillRect(left, u.bbox.top, Math.max(2, right - left), u.bbox.height);
          u.ctx.restore();
        },
      ],
    },
  };
}

function chartData(series) {
  const measured = series.values;
  const ahead = series.kind === 'trend' ? projection(series) : [];
  const count = measured.length + ahead.length;
  const xs = timestamps(series, count);
  const constant = (v) => (v == null ? null : Array(count).fill(v));
  const lines = [{ key: 'value', values: [...measured, ...Array(ahead.length).fill(null)] }];
  if (ahead.length) {
    const line = Array(count).fill(null);
    line[measured.length - 1] = measured[measured.length - 1];
    ahead.forEach((v, i) => {
      line[measured.length + i] = v;
    });
    lines.push({ key: 'projection', values: line, dash: [6, 4] });
  }
  if (series.baseline != null) lines.push({ key: 'baseline', values: constant(series.baseline), dash: [2, 4] });
  if (series.threshold != null) lines.push({ key: 'threshold', values: constant(series.threshold), dash: [8, 4] });
  if (series.critical != null && series.critical !== series.threshold) {
    lines.push({ key: 'critical', values: constant(series.critical), dash: [8, 4] });
  }
  return { xs, lines };
}

export function caption(series, language, words) {
  const metric = (METRICS[language] || METRICS.en)[series.metric] || series.metric;
  const last = series.values[series.values.length - 1];
  return format(series.kind === 'trend' ? words.chartTrend : words.chartIncident, {
    id: series.id,
    server: series.serverId,
    metric,
    u: series.unit === '' ? '' : ` ${series.unit}`.replace(' %', '%'),
    b: series.baseline,
    th: series.threshold ?? series.critical,
    cur: last,
    slope: series.slopePerHour,
  });
}

/** The lines a chart of `series` draws: [{label, color, dashed}], for a legend. */
export function legendFor(series, words) {
  return chartData(series).lines.map((line) => ({
    label: words.chartSeries[line.key],
    color: COLORS[line.key],
    dashed: Boolean(line.dash),
  }));
}

/** Draw one chart into `container` (a figure); returns the uPlot instance. */
export function drawChart(container, series, language, words) {
  const { xs, lines } = chartData(series);
  const width = Math.max(280, Math.min(container.clientWidth || 640, 900));
  const options = {
    width,
    height: 220,
    // the fleet's clock is KST (its timestamps are +09:00) and the report's text says times in
    // it: the axis does too, on a 24-hour clock in both languages
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), 'Asia/Seoul'),
    fmtDate: (template) =>
      uPlot.fmtDate(
        template
          .replace('{h}:{mm}{aa}', '{HH}:{mm}')
          .replace('{h}{aa}', '{HH}:00')
          .replace('{M}/{D}/{YY}', '{M}/{D}'),
      ),
    scales: { x: { time: true } },
    axes: [{ stroke: '#333' }, { stroke: '#333', size: 56 }],
    legend: { show: false }, // drawn by legendFor as a plain list (uPlot's is a table)
    cursor: { drag: { x: false, y: false } },
    series: [
      {},
      ...lines.map((line) => ({
        label: words.chartSeries[line.key],
        stroke: COLORS[line.key],
        width: line.key === 'value' ? 2 : 1.5,
        dash: line.dash,
        points: { show: false },
        spanGaps: false,
      })),
    ],
    plugins: [highlightPlugin(series)],
  };
  return new uPlot(options, [xs, ...lines.map((line) => line.values)], container);
}
